"""Edges of the serving path checked without starting Ray: the bearer gate against the header bytes a client sends,
a token read from a file, run-time batching settings that would stall requests, and model metadata that JSON
cannot carry."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ditcore.config import ConfigError
from serve import ingress
from serve.auth import BearerAuth
from serve.batching import SamplerUserConfig


def _gated(token: str) -> TestClient:
    inner = Starlette(routes=[Route("/v1/model", lambda _r: PlainTextResponse("ok"))])
    ingress._AUTH["auth"] = BearerAuth(token)
    return TestClient(ingress.BearerGate(inner))


@pytest.fixture(autouse=True)
def _restore_auth():
    saved = ingress._AUTH["auth"]
    yield
    ingress._AUTH["auth"] = saved


@pytest.mark.parametrize("token", ["s3cret", "pässwörd", "トークン-1"])
def test_a_token_is_compared_as_the_bytes_a_client_sends(token):
    client = _gated(token)
    sent = {"Authorization": b"Bearer " + token.encode("utf-8")}  # what curl / requests put on the wire
    assert client.get("/v1/model", headers=sent).status_code == 200
    assert client.get("/v1/model", headers={"Authorization": b"Bearer " + token.encode() + b"x"}).status_code == 401
    assert client.get("/v1/model").status_code == 401


def test_a_token_read_from_a_file_loses_its_trailing_newline(monkeypatch):
    monkeypatch.setenv("DITSCALE_EDGE_TOKEN", "s3cret\n")
    auth = BearerAuth.from_env("DITSCALE_EDGE_TOKEN", required=True)
    auth.check("Bearer", "s3cret")
    monkeypatch.setenv("DITSCALE_EDGE_TOKEN", " \n")  # blank is unset: a required token still fails closed
    with pytest.raises(ValueError, match="DITSCALE_EDGE_TOKEN"):
        BearerAuth.from_env("DITSCALE_EDGE_TOKEN", required=True)


@pytest.mark.parametrize("bad", [math.inf, math.nan, -0.5])
def test_a_batch_wait_that_is_not_a_finite_number_is_refused_naming_it(bad):
    with pytest.raises(ConfigError, match="batch_wait_timeout_s"):
        SamplerUserConfig.from_user_config({"batch_wait_timeout_s": bad})
    assert SamplerUserConfig.from_user_config({"batch_wait_timeout_s": 0.0}).batch_wait_timeout_s == 0.0


def test_model_info_turns_non_finite_metadata_into_null():
    from serve.sampler import model_info

    pipe = types.SimpleNamespace(
        checkpoint_uri="/ckpt",
        conditioning="class",
        num_classes=4,
        image_size=32,
        config={"name": "tiny"},
        model=types.SimpleNamespace(config=None, parameters=lambda: [torch.zeros(3)]),
        manifest=None,
        state={"fid": float("nan"), "best_fid": 12.5, "history": [1.0, float("inf")], "step": 3},
    )
    registry = {"fid": "nan", "tags": {"train_flops": "inf"}, "note": float("-inf")}
    info = model_info(pipe, registry)
    json.dumps(info, allow_nan=False)  # raises on any NaN / inf left
    assert info["fid"] == 12.5  # the first finite value: state's best_fid after the NaNs
    assert info["train_flops"] is None
    assert info["state"]["fid"] is None and info["state"]["history"] == [1.0, None] and info["state"]["step"] == 3
    assert info["registry"]["note"] is None


def test_a_default_sampler_the_checkpoint_cannot_run_is_refused_and_the_replica_keeps_serving(tmp_path):
    """user_config default_sampler was checked against the sampler names only: "ddpm-learned" on a model without
    learned variance was accepted, the replica reported healthy, and every request that left `sampler` out got a
    422 on field `sampler`, blaming the client. It is refused without raising (Serve stops a replica whose
    reconfigure raises, and a new version whose replicas fail to start stalls the application): the rest of the
    update applies, the previous default sampler stays, and GET /v1/model says why. A schema error (unknown key)
    still fails a replica's first user_config and is refused on a running one."""
    import asyncio

    from pipelines.generation import GenerationPipeline
    from serve.batching import SamplerUserConfig
    from serve.sampler import Sampler
    from tests.jobs._train_helpers import perturbed_model, save_model_checkpoint

    model = perturbed_model("DiT-T/2", num_classes=4, input_size=8, in_channels=3)
    ckpt = save_model_checkpoint(tmp_path, model, {}, state={})
    sampler = object.__new__(Sampler.func_or_class)  # the deployment's class, its state set as __init__ does
    sampler.pipe = GenerationPipeline.from_checkpoint(ckpt, device="cpu")
    sampler.registry, sampler.config, sampler.config_error, sampler._configured = None, SamplerUserConfig(), None, False
    with pytest.raises(ConfigError, match="default_stepz"):
        sampler.reconfigure({"default_stepz": 3})  # a new replica's first: it does not start
    sampler.reconfigure({"default_sampler": "ddpm-learned", "default_steps": 7})  # a new replica: built-in default
    assert (sampler.config.default_sampler, sampler.config.default_steps) == ("dpmpp-2m", 7)
    assert "default_sampler: 'ddpm-learned' (at default_guidance 4)" in asyncio.run(sampler.info())["config_error"]
    sampler.reconfigure({"default_sampler": "euler", "max_batch_size": 3})
    assert sampler.config.default_sampler == "euler" and asyncio.run(sampler.info())["config_error"] is None
    for bad, words in (
        ({"default_sampler": "ddpm-learned", "max_batch_size": 3}, "needs a checkpoint trained with"),
        ({"default_sampler": "dpmsolver-v3", "default_guidance": 2.0, "max_batch_size": 3}, "at default_guidance 2"),
        ({"default_stepz": 3}, "user_config update refused, the previous settings stay: "),
    ):
        sampler.reconfigure(bad)  # a running replica: refused, not raised
        assert sampler.config.default_sampler == "euler" and sampler.config.max_batch_size == 3
        assert words in asyncio.run(sampler.info())["config_error"]
    # dpmsolver-v3 has statistics for guidance 1.5 only: a new guidance alone keeps the sampler, so the previous
    # guidance stays with it (keeping only the sampler left a default that 422'd every request without `sampler`).
    import torch

    from ditcore.samplers import EMS
    from pipelines.checkpoint_extras import save_ems

    shape = (4, 3, 8, 8)
    save_ems(
        ckpt,
        EMS(
            torch.linspace(-4.0, 4.0, 4, dtype=torch.float64),
            torch.zeros(shape),
            torch.zeros(shape),
            torch.zeros(shape),
        ),
        1.5,
        {},
    )
    sampler.reconfigure({"default_sampler": "dpmsolver-v3", "default_guidance": 1.5})
    assert asyncio.run(sampler.info())["config_error"] is None
    sampler.reconfigure({"default_sampler": "dpmsolver-v3", "default_guidance": 3.0})
    assert (sampler.config.default_sampler, sampler.config.default_guidance) == ("dpmsolver-v3", 1.5)
    assert "stays 'dpmsolver-v3' at guidance 1.5" in asyncio.run(sampler.info())["config_error"]
    assert sampler.check_sampler({}) is None  # a request without sampler or guidance runs


def test_a_field_error_names_the_value_sent():
    # {"steps": 500} came back as "steps: Input should be less than or equal to 250", the value left out.
    from pydantic import ValidationError

    from serve.schema import GenerateRequest, validation_errors

    def messages(body):
        with pytest.raises(ValidationError) as e:
            GenerateRequest.model_validate(body)
        return [f.message for f in validation_errors(e.value.errors())]

    assert messages({"steps": 500}) == ["steps: Input should be less than or equal to 250 (got 500)"]
    assert messages({"seed": -1}) == ["seed: Input should be greater than or equal to 0 (got -1)"]
    assert messages({"guidance": "4"}) == ['guidance: Input should be a valid number (got "4")']
    assert messages({"prompt": "a" * 500, "steps": 0})[-1].endswith("(got 0)")
    long = messages({"guidance": "x" * 500})[0]
    assert long.endswith("xxx...)") and len(long) < 120  # a long value is cut
    (sampler,) = messages({"sampler": "foo"})
    assert sampler.startswith("sampler: unknown sampler 'foo'") and "Value error" not in sampler
    assert "(got" not in sampler  # the check's own message names it already
    assert messages({"bogus": 1}) == ["bogus: unknown field"]


def test_a_content_length_of_non_ascii_digits_is_a_400_naming_it():
    # "²".isdigit() is true and int("²") raised: the body-size middleware crashed instead of answering.
    client = TestClient(ingress.BodySizeLimit(Starlette(routes=[Route("/", lambda _r: PlainTextResponse("ok"))])))
    r = client.post("/", content=b"x", headers={"Content-Length": "²".encode("latin-1")})
    assert r.status_code == 400 and "Content-Length: not an integer, got '" in r.text and "²" in r.text
    assert client.post("/", content=b"x").status_code == 405  # a well-formed one reaches the app
