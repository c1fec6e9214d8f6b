"""A default sampler the checkpoint cannot run, deployed over a running service: it is refused without failing the
replicas (a new version whose replicas fail to start stalls the application: requests hang), the rest of the
user_config applies, the service answers with the previous default sampler and GET /v1/model says why."""

from __future__ import annotations

import pytest
import requests

from tests.serve._helpers import class_checkpoint, serve_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    ckpt = class_checkpoint(tmp_path_factory.mktemp("reconfigure"))
    for url in serve_checkpoint(ckpt, "reconfigure"):
        yield url, ckpt


def _deploy(ckpt: str, user_config: dict) -> None:
    from ray import serve

    from serve.app import make_app

    deployments = {
        "Sampler": {"ray_actor_options": {"num_cpus": 0.5}, "user_config": user_config},
        "Ingress": {"ray_actor_options": {"num_cpus": 0}, "user_config": {"auth_token_env": None}},
    }
    serve.run(make_app({"checkpoint": ckpt}, deployments), name="reconfigure", route_prefix="/")


def test_an_update_the_checkpoint_cannot_run_is_refused_and_the_service_keeps_its_settings(service):
    url, ckpt = service
    _deploy(ckpt, {"default_sampler": "euler", "default_steps": 3})
    ok = requests.post(f"{url}/v1/generate", json={"label": 1, "seed": 7}, timeout=120)
    assert ok.status_code == 200 and requests.get(f"{url}/v1/model", timeout=60).json()["config_error"] is None
    # serve.run deploys a new version: its replicas start with this config and refuse only the default sampler
    _deploy(ckpt, {"default_sampler": "ddpm-learned", "default_steps": 3})  # this model has no learned variance
    info = requests.get(f"{url}/v1/model", timeout=60).json()
    assert "default_sampler: 'ddpm-learned'" in info["config_error"], info
    assert info["defaults"]["sampler"] == "dpmpp-2m" and info["defaults"]["steps"] == 3  # a new replica: built-in
    served = requests.post(f"{url}/v1/generate", json={"label": 1, "seed": 7}, timeout=120)
    assert served.status_code == 200, served.text
    _deploy(ckpt, {"default_sampler": "euler", "default_steps": 3})
    info = requests.get(f"{url}/v1/model", timeout=60).json()
    assert info["config_error"] is None and info["defaults"]["sampler"] == "euler"
    assert requests.post(f"{url}/v1/generate", json={"label": 1, "seed": 7}, timeout=120).content == ok.content
