"""The HTTP API's `steer` field: a stored concept steers the image; an unknown concept, an out-of-range alpha or
layer, or a malformed steer object is a 422 naming the field."""

from __future__ import annotations

import json

import pytest
import requests
import torch

from tests.conftest import free_port
from tests.jobs._train_helpers import make_eval_assets, make_latent_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    import ray
    from ray import serve

    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import build_model, config_to_dict
    from pipelines.checkpoint_extras import save_concepts
    from serve.app import make_app

    root = tmp_path_factory.mktemp("steer_http")
    assets = make_eval_assets(root / "assets")
    data = make_latent_dataset(root / "lat", n=16, num_classes=10, vae_path=assets["vae_path"])
    torch.manual_seed(0)
    model = build_model("DiT-T/2", num_classes=10, input_size=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = {
        "model": config_to_dict(model.config),
        "objective": {"process": "flow", "prediction": "velocity"},
        "data": {"manifest": data, "scaling_factor": 0.5, "shift_factor": 0.0},
    }
    ckpt = str(save_checkpoint(root / "ckpt", model=model, ema=model, config=config, state={"step": 1}))
    save_concepts(ckpt, {"red": torch.randn(64), "blue": torch.randn(64)}, layer=1, info={})
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            make_app(
                {"checkpoint": ckpt},
                {
                    "Sampler": {"ray_actor_options": {"num_cpus": 0.5}},
                    "Ingress": {"ray_actor_options": {"num_cpus": 0}, "user_config": {"auth_token_env": None}},
                },
            ),
            name="steer",
            route_prefix="/",
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url: str, **body):
    return requests.post(f"{url}/v1/generate", timeout=120, json={"label": 1, "seed": 7, "steps": 3, **body})


def test_steer_changes_the_image_and_is_reported(service):
    plain = _post(service)
    steered = _post(service, steer={"concept": "red", "alpha": 4.0})
    assert plain.status_code == 200 and steered.status_code == 200, steered.text
    assert plain.content != steered.content
    settings = json.loads(steered.headers["X-Ditscale-Settings"])
    assert settings["steer"] == {"concept": "red", "alpha": 4.0, "layer": None}
    assert _post(service, steer={"concept": "red", "alpha": 0.0}).content == plain.content


@pytest.mark.parametrize(
    "steer,field",
    [
        ({"concept": "purple", "alpha": 1.0}, "steer.concept"),
        ({"concept": "red", "alpha": 50.0}, "alpha"),
        ({"concept": "red", "alpha": "2"}, "alpha"),
        ({"concept": "red", "alpha": 1.0, "layer": 5}, "steer.layer"),
        ({"concept": "red", "alpha": 1.0, "scale": 2}, "scale"),
        ({"alpha": 1.0}, "concept"),
    ],
)
def test_bad_steer_is_a_422_naming_the_field(service, steer, field):
    r = _post(service, steer=steer)
    assert r.status_code == 422, r.text
    fields = [d.get("field", "") for d in r.json()["detail"]]
    assert any(field in f for f in fields), r.json()
