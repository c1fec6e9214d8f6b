"""Serve autoscaling of the sampler, observed rather than configured: under sustained load from real HTTP clients
the Sampler deployment goes from 1 to 2 running replicas, and back to 1 when the load stops (local Ray, small
targets and delays). Every wait polls Serve's own status with a deadline."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from tests.conftest import free_port
from tests.serve.test_app import make_class_checkpoint

pytestmark = pytest.mark.slow

APP = "auto"


def _running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or "Sampler" not in app.deployments:
        return 0
    states = app.deployments["Sampler"].replica_states
    return sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")


def _wait_for(replicas: int, timeout: float, what: str) -> float:
    """Poll Serve's status until the Sampler runs `replicas` replicas; the seconds it took."""
    t0 = time.monotonic()
    while _running_replicas() != replicas:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: Sampler still at {_running_replicas()} running replicas after {timeout} s")
        time.sleep(0.25)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def autoscaling_app(tmp_path_factory):
    import ray
    from ray import serve

    from serve.app import make_app

    ckpt = make_class_checkpoint(tmp_path_factory.mktemp("auto") / "step_00000100")
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    sampler = {
        "ray_actor_options": {"num_cpus": 1},
        "max_ongoing_requests": 2,
        "autoscaling_config": {
            "min_replicas": 1,
            "initial_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 3,
        },
        "user_config": {"default_steps": 40, "default_sampler": "euler", "max_batch_size": 1},
    }
    app = make_app(
        {"checkpoint": str(ckpt)},
        {
            "Sampler": sampler,
            "Ingress": {"ray_actor_options": {"num_cpus": 0}, "user_config": {"auth_token_env": None}},
        },
    )
    try:
        serve.run(app, name=APP, route_prefix=f"/{APP}")
        yield f"http://127.0.0.1:{port}/{APP}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_sampler_scales_up_under_load_and_back_down(autoscaling_app):
    url = f"{autoscaling_app}/v1/generate"
    assert requests.post(url, json={"label": 1, "steps": 2}, timeout=120).status_code == 200
    assert _running_replicas() == 1

    stop, codes, lock = threading.Event(), Counter(), threading.Lock()

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            r = requests.post(url, json={"label": i % 10, "seed": 1000 * i + n}, timeout=300)
            with lock:
                codes[r.status_code] += 1
            n += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    try:
        _wait_for(2, timeout=240, what="scale up under load")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert codes[200] > 0 and set(codes) <= {200, 503}, codes  # shed with 503 at most, never an error
    _wait_for(1, timeout=240, what="scale down after the load")
    assert requests.post(url, json={"label": 2, "steps": 2}, timeout=120).status_code == 200
