"""The HTTP API's `steer` field: a stored concept steers the image; an unknown concept, an out-of-range alpha or
layer, or a malformed steer object is a 422 naming the field."""

from __future__ import annotations

import json

import pytest
import requests
import torch

from tests.serve._helpers import class_checkpoint, serve_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from pipelines.checkpoint_extras import save_concepts

    ckpt = class_checkpoint(tmp_path_factory.mktemp("steer_http"))
    save_concepts(ckpt, {"red": torch.randn(64), "blue": torch.randn(64)}, layer=1, info={})
    yield from serve_checkpoint(ckpt, "steer")


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
