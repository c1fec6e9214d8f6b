"""Stopping the service finishes the requests in flight: `ditscale serve` on SIGTERM / Ctrl-C calls
`serve.cli.serve.drain` before `serve.shutdown()`. Shutting Serve down alone stops the HTTP proxies at once, and a
client in the middle of a request loses its connection (`RemoteDisconnected`)."""

from __future__ import annotations

import threading
import time

import pytest
import requests
import torch

from tests.conftest import free_port

pytestmark = pytest.mark.slow

APP = "drain"


def _slow_checkpoint(directory) -> str:
    """A class-conditional pixel DiT at 32x32 (256 tokens): a 16-image, 250-step request takes seconds on a CPU."""
    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import build_model, config_to_dict

    model = build_model("DiT-T/2", in_channels=3, input_size=32, num_classes=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # adaLN-Zero outputs zeros: perturb so images depend on the weights
            p.add_(0.03 * torch.randn(p.shape, generator=g))
    config = {"model": config_to_dict(model.config), "objective": {"process": "flow", "prediction": "velocity"}}
    return str(save_checkpoint(directory / "step_00000001", model=model, config=config, state={"step": 1}))


def _ongoing_on_sampler() -> int:
    """Requests the Sampler replicas are working on, asked of the replicas themselves (Serve's own count)."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{APP}#Sampler#")
    ]
    return sum(ray.get(ray.get_actor(n, namespace="serve").get_num_ongoing_requests.remote()) for n in names)


def test_stopping_finishes_the_request_in_flight(tmp_path):
    import ray
    from ray import serve

    from serve.app import make_app
    from serve.cli.serve import drain

    ckpt = _slow_checkpoint(tmp_path)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    port = free_port()
    result: dict = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            make_app(
                {"checkpoint": ckpt},
                {
                    "Sampler": {"ray_actor_options": {"num_cpus": 0.5}, "graceful_shutdown_timeout_s": 120},
                    "Ingress": {
                        "ray_actor_options": {"num_cpus": 0},
                        "user_config": {"auth_token_env": None},
                        "graceful_shutdown_timeout_s": 120,
                    },
                },
            ),
            name=APP,
            route_prefix="/",
        )
        body = {"label": 3, "num_images": 16, "steps": 100, "guidance": 3.0, "seed": 7, "format": "json"}

        def call():
            try:
                r = requests.post(f"http://127.0.0.1:{port}/v1/generate", json=body, timeout=300)
                result["status"], result["json"] = r.status_code, r.json()
            except requests.RequestException as exc:
                result["error"] = repr(exc)

        client = threading.Thread(target=call)
        client.start()
        deadline = time.monotonic() + 120
        while _ongoing_on_sampler() == 0:  # wait (by polling Serve) until the request is on the replica
            assert client.is_alive(), f"the request ended before it reached the sampler: {result}"
            assert time.monotonic() < deadline, "the request never reached the sampler"
        started = time.monotonic()
        drain(APP)  # returns once the replicas are gone; the proxy is still up and has sent the response
        drained_s = time.monotonic() - started
        client.join(timeout=60)
    finally:
        serve.shutdown()
        ray.shutdown()
    assert "error" not in result, f"the client lost its request: {result['error']}"
    assert result["status"] == 200, result
    assert [im["seed"] for im in result["json"]["images"]] == list(range(7, 23))
    print(f"drained in {drained_s:.1f} s")
