"""Sampler service end to end: a local Ray + Serve instance, real HTTP requests, tiny checkpoints.

One Serve instance for the module, two applications on one port:
  /class  pixel-space DiT, checkpoint resolved as the MLflow 'champion' from a sqlite store;
          no auth, dynamic batching
  /text   MMDiT + MiniLM + tiny AutoencoderKL, checkpoint loaded from s3:// (local moto server);
          bearer auth on, one request in flight and one queued (overload -> 503)
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

TOKEN_ENV = "DITSCALE_TEST_API_TOKEN"
TOKEN = "s3cret-token"
NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------------
# Tiny artefacts
# ---------------------------------------------------------------------------------------------


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.03) -> torch.nn.Module:
    """A fresh (adaLN-Zero) model outputs zeros; random weights make images depend on seed/label/prompt."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def make_class_checkpoint(directory: Path) -> Path:
    """Pixel-space class-conditional DiT (16x16 RGB, 10 classes), no data manifest needed."""
    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import build_model, config_to_dict

    model = _perturb(build_model("DiT-T/4", in_channels=3, input_size=16, num_classes=NUM_CLASSES), seed=0)
    config = {"model": config_to_dict(model.config), "objective": {"process": "flow", "prediction": "velocity"}}
    return save_checkpoint(
        directory, model=model, config=config, state={"step": 100, "train_flops": 2.5e12, "fid": 99.0}
    )


def make_text_checkpoint(root: Path) -> Path:
    """MMDiT over a tiny random AutoencoderKL's latents, MiniLM text, and a data manifest naming both."""
    from safetensors.numpy import save_file

    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import build_model, config_to_dict
    from pipelines.encoders.text import load_text_encoder
    from tests.pipelines.encoders._tiny import tiny_autoencoder

    vae = tiny_autoencoder((8, 16))
    vae.save_pretrained(root / "vae", safe_serialization=True)
    encoder = load_text_encoder("minilm")
    data = root / "data"
    data.mkdir(parents=True)
    null = encoder.encode([""])
    save_file({k: np.ascontiguousarray(v[0]) for k, v in null.items()}, str(data / "null_text.safetensors"))
    manifest = {
        "schema_version": 1,
        "source": {"kind": "test"},
        "image_size": 16,
        "num_classes": None,
        "counts": {"input": 0, "written": 0, "failed": 0},
        "vae": {
            "path": str(root / "vae"),
            "revision": None,
            "scaling_factor": 0.5,
            "shift_factor": 0.0,
            "latent_channels": 4,
            "downsample": 2,
            "latent_size": 8,
        },
        "text": {
            "encoder": "minilm",
            "max_length": encoder.max_length,
            "dim": encoder.dim,
            "pooled_dim": encoder.pooled_dim,
            "null": "null_text.safetensors",
        },
        "latent_stats": {"mean": [0.0] * 4, "std": [1.0] * 4},
        "fid": None,
        "config": {},
        "code_version": "test",
    }
    (data / "manifest.json").write_text(json.dumps(manifest))
    model = _perturb(
        build_model(
            "MMDiT-T", depth=1, text_dim=encoder.dim, pooled_dim=encoder.pooled_dim, max_text_len=encoder.max_length
        ),
        seed=1,
    )
    config = {
        "model": config_to_dict(model.config),
        "objective": {"process": "flow", "prediction": "velocity"},
        "data": {"manifest": str(data)},
    }
    return save_checkpoint(root / "ckpt" / "step_00000010", model=model, config=config, state={"step": 10})


def register_champion(tracking_uri: str, checkpoint: Path) -> None:
    """Registered model 'ditscale' version 1 -> checkpoint, alias 'champion', with fid/train_flops tags."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model("ditscale")
    mv = client.create_model_version(
        "ditscale",
        source=str(checkpoint),
        tags={"checkpoint": str(checkpoint), "fid": "12.5", "train_flops": "3e12"},
    )
    client.set_registered_model_alias("ditscale", "champion", mv.version)


# ---------------------------------------------------------------------------------------------
# One Ray + Serve for the module
# ---------------------------------------------------------------------------------------------


def _sampler_opts(user_config: dict, **extra) -> dict:
    return {"ray_actor_options": {"num_cpus": 0.5}, "user_config": user_config, "health_check_period_s": 1, **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory, moto_s3):
    import boto3
    import ray
    from ray import serve

    from pipelines.infra import storage
    from serve.app import make_app

    tmp = tmp_path_factory.mktemp("serve")
    class_ckpt = make_class_checkpoint(tmp / "class" / "step_00000100")
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # Creating the MLflow sqlite schema is slow: overlap it with building the text checkpoint and ray.init.
    with ThreadPoolExecutor(1) as pool:
        registered = pool.submit(register_champion, tracking_uri, class_ckpt)
        text_ckpt = make_text_checkpoint(tmp / "text")
        boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket="ckpts")
        text_uri = "s3://ckpts/runs/text/step_00000010"
        storage.upload_dir(str(text_ckpt), text_uri)
        # Replicas inherit the driver's environment (AWS_* of the moto server, the API token).
        os.environ[TOKEN_ENV] = TOKEN
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
        registered.result()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    fast = {
        "default_steps": 4,
        "default_sampler": "dpmpp-2m",
        "default_guidance": 2.0,
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.25,
    }
    apps = {
        # Class model by MLflow champion alias; no auth; dynamic batching up to 8 requests.
        "class": make_app(
            {"champion": True, "tracking_uri": tracking_uri},
            {
                "Sampler": _sampler_opts({**fast, "max_batch_images": 4}),
                "Ingress": {"ray_actor_options": {"num_cpus": 0}, "user_config": {"auth_token_env": None}},
            },
        ),
        # Text model from s3://; bearer auth on; one request in flight + one queued (overload -> 503).
        "text": make_app(
            {"checkpoint": text_uri},
            {
                "Sampler": _sampler_opts(
                    {**fast, "max_batch_size": 1, "batch_wait_timeout_s": 0.0},
                    max_ongoing_requests=1,
                    max_queued_requests=1,
                ),
                "Ingress": {
                    "ray_actor_options": {"num_cpus": 0},
                    "user_config": {"auth_token_env": TOKEN_ENV, "max_body_bytes": 20_000},
                },
            },
        ),
    }
    try:
        serve.run_many([serve.RunTarget(target=app, name=name, route_prefix=f"/{name}") for name, app in apps.items()])
        yield {"base": f"http://127.0.0.1:{port}", "class_ckpt": class_ckpt, "text_uri": text_uri}
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop(TOKEN_ENV, None)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _post(url: str, body, **kw) -> requests.Response:
    if "/text/" in url:
        kw.setdefault("headers", AUTH)
    return requests.post(url, json=body, timeout=120, **kw)


def _image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_generate_by_label(server):
    url = f"{server['base']}/class/v1/generate"
    r = _post(url, {"label": 3, "seed": 7, "steps": 4, "sampler": "euler", "guidance": 3.0})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["X-Ditscale-Seed"] == "7" and r.headers["X-Ditscale-Steps"] == "4"
    assert r.headers["X-Ditscale-Sampler"] == "euler" and float(r.headers["X-Ditscale-Guidance"]) == 3.0
    settings = json.loads(r.headers["X-Ditscale-Settings"])
    assert settings["label"] == 3 and settings["seeds"] == [7] and settings["checkpoint"] == str(server["class_ckpt"])
    img = _image(r.content)
    assert img.shape == (16, 16, 3) and img.std() > 0

    # Several images -> JSON with base64 PNGs; image i uses seed + i, identical to asking for that seed alone.
    r3 = _post(url, {"label": 3, "seed": 6, "steps": 4, "sampler": "euler", "guidance": 3.0, "num_images": 3})
    assert r3.status_code == 200 and r3.headers["content-type"].startswith("application/json")
    body = r3.json()
    assert body["seeds"] == [6, 7, 8] and [im["seed"] for im in body["images"]] == [6, 7, 8]
    assert body["settings"]["num_images"] == 3 and body["settings"]["steps"] == 4
    assert base64.b64decode(body["images"][1]["png_base64"]) == r.content
    assert base64.b64decode(body["images"][0]["png_base64"]) != r.content
    # More images than max_batch_images (4) run 4 at a time: the same images, forward batches of 4.
    r6 = _post(url, {"label": 3, "seed": 6, "steps": 4, "sampler": "euler", "guidance": 3.0, "num_images": 6})
    assert r6.status_code == 200 and r6.json()["settings"]["batch_images"] == 4, r6.text
    assert [im["png_base64"] for im in r6.json()["images"][:3]] == [im["png_base64"] for im in body["images"]]

    # Defaults come from the Sampler's user_config (applied in reconfigure); a random seed is reported.
    rd = _post(url, {"label": 5, "format": "json"})
    assert rd.status_code == 200
    s = rd.json()["settings"]
    assert (s["steps"], s["sampler"], s["guidance"]) == (4, "dpmpp-2m", 2.0)
    assert 0 <= s["seed"] <= 2**32 - 1 and len(rd.json()["images"]) == 1


def test_generate_by_prompt_from_s3_checkpoint(server):
    url = f"{server['base']}/text/v1/generate"
    body = {"prompt": "a red square on a white background", "seed": 1, "steps": 3}
    a = _post(url, body)
    assert a.status_code == 200, a.text
    assert a.headers["content-type"] == "image/png"
    assert _image(a.content).shape == (16, 16, 3)
    assert json.loads(a.headers["X-Ditscale-Settings"])["prompt"] == body["prompt"]
    assert _post(url, body).content == a.content  # deterministic
    assert _post(url, {**body, "prompt": "a green cat"}).content != a.content
    neg = _post(url, {**body, "negative_prompt": "blurry"})
    assert neg.status_code == 200 and neg.content != a.content
    assert json.loads(neg.headers["X-Ditscale-Settings"])["negative_prompt"] == "blurry"
    # Unguided (guidance 1) there is no unconditional half to replace: the negative prompt is dropped, and the
    # settings say so instead of echoing it as if it had been used.
    plain = _post(url, {**body, "guidance": 1.0})
    unguided = _post(url, {**body, "guidance": 1.0, "negative_prompt": "blurry"})
    assert unguided.status_code == 200 and unguided.content == plain.content
    assert json.loads(unguided.headers["X-Ditscale-Settings"])["negative_prompt"] is None
    # Unicode prompts are fine; the settings header stays ASCII.
    u = _post(url, {**body, "prompt": "ein grüner Würfel \u2603"})
    assert u.status_code == 200 and "\\u2603" in u.headers["X-Ditscale-Settings"]


def test_model_info_and_openapi(server):
    info = requests.get(f"{server['base']}/class/v1/model", timeout=60).json()
    assert info["checkpoint"] == str(server["class_ckpt"])
    assert info["conditioning"] == "class" and info["num_classes"] == NUM_CLASSES and info["image_size"] == 16
    assert info["registry"]["version"] in (1, "1")
    assert info["fid"] == 12.5 and info["train_flops"] == 3e12  # registry tags win over state.json
    assert info["params"] > 0 and info["flops"]["forward_flops"] == 2 * info["flops"]["forward_macs"]
    assert info["config"]["model"]["arch"] == "dit" and info["state"]["step"] == 100
    assert info["defaults"]["steps"] == 4 and info["defaults"]["max_batch_size"] == 8

    text = requests.get(f"{server['base']}/text/v1/model", headers=AUTH, timeout=60).json()
    assert text["checkpoint"] == server["text_uri"] and text["conditioning"] == "text"
    assert text["registry"] is None and text["config"]["model"]["arch"] == "mmdit"

    spec = requests.get(f"{server['base']}/class/openapi.json", timeout=60).json()
    assert {"/v1/generate", "/v1/model", "/healthz"} <= set(spec["paths"])
    req = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"prompt", "label", "steps", "sampler", "guidance", "seed", "num_images", "format"} <= set(req)
    assert requests.get(f"{server['base']}/class/docs", timeout=60).status_code == 200


def test_same_image_alone_or_batched(server):
    """A request returns the same PNG whether it ran alone or inside a dynamic batch (per-sample generators)."""
    url = f"{server['base']}/class/v1/generate"
    target = {"label": 2, "seed": 1234, "steps": 4, "guidance": 2.5}
    other_steps = {"label": 4, "seed": 99, "steps": 3, "guidance": 2.5}  # incompatible: never batched with target
    alone = _post(url, target)
    alone_other = _post(url, other_steps)
    assert alone.status_code == 200 and alone_other.status_code == 200
    assert alone.headers["X-Ditscale-Batch-Images"] == "1"

    bodies = [target, other_steps] + [
        {"label": i % NUM_CLASSES, "seed": 500 + i, "steps": 4, "guidance": 2.5, "num_images": 1 + i % 2}
        for i in range(6)
    ]
    deadline = time.monotonic() + 90
    while True:
        with ThreadPoolExecutor(len(bodies)) as pool:
            rs = list(pool.map(lambda b: _post(url, b), bodies))
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
        assert rs[0].content == alone.content
        assert rs[1].content == alone_other.content
        # The 3-step request is incompatible with every other one, so it always runs alone.
        assert rs[1].headers["X-Ditscale-Batch-Images"] == "1"
        if int(rs[0].headers["X-Ditscale-Batch-Images"]) > 1:
            break  # the target really shared a forward pass with other requests
        assert time.monotonic() < deadline, "the concurrent requests were never batched together"


INVALID_CLASS = [
    ({"label": 1, "steps": 0}, "steps"),
    ({"label": 1, "steps": 100000}, "steps"),
    ({"label": 1, "steps": "10"}, "steps"),
    ({"label": 1, "steps": 2.5}, "steps"),
    ({"label": 1, "guidance": -1}, "guidance"),
    ({"label": 1, "guidance": 1e9}, "guidance"),
    ({"label": 1, "guidance": "high"}, "guidance"),
    ({"label": 1, "num_images": 0}, "num_images"),
    ({"label": 1, "num_images": 1000}, "num_images"),
    ({"label": 1, "seed": -1}, "seed"),
    ({"label": 1, "seed": 2**40}, "seed"),
    ({"label": 1, "seed": True}, "seed"),
    ({"label": 1, "sampler": "warp-drive"}, "sampler"),
    ({"label": 1, "format": "gif"}, "format"),
    ({"label": NUM_CLASSES}, "label"),
    ({"label": -1}, "label"),
    ({"label": "cat"}, "label"),
    ({}, "label"),
    ({"prompt": "a cat"}, "prompt"),
    ({"label": 1, "checkpoint": "/etc/passwd"}, "checkpoint"),
    ({"label": 1, "prompt": 5}, "prompt"),
    ({"label": 1, "steer": "red"}, "steer"),
    ({"label": 1, "seed": 2**32 - 1, "num_images": 2}, "seed"),  # image 2 would need seed 2**32
    ({"label": 1, "sampler": "ddpm-learned"}, "sampler"),  # no learned variance in this checkpoint
    ({"label": 1, "sampler": "dpmsolver-v3", "guidance": 3.5}, "sampler"),  # no model statistics for guidance 3.5
]
INVALID_TEXT = [
    ({"prompt": "x" * 5000}, "prompt"),
    ({"prompt": "ok", "negative_prompt": "y" * 5000}, "negative_prompt"),
    ({}, "prompt"),
    ({"prompt": "ok", "label": 3}, "label"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
]


def test_invalid_inputs_get_4xx_naming_the_field(server):
    base = server["base"]
    for app, cases in (("class", INVALID_CLASS), ("text", INVALID_TEXT)):
        for body, field in cases:
            r = _post(f"{base}/{app}/v1/generate", body)
            assert 400 <= r.status_code < 500, (app, body, r.status_code, r.text)
            detail = r.json()["detail"]
            assert any(d["field"] == field and field in d["message"] for d in detail), (app, body, r.text)
    url = f"{base}/class/v1/generate"
    # Not JSON / not an object.
    not_utf8, long_number = b'{"label": 1, "prompt": "\xff\xfe"}', b'{"seed": ' + b"9" * 5000 + b"}"
    deep = b"[" * 60_000  # under the body limit, deeper than the JSON parser recurses
    for raw in (b"{not json", b"[1, 2]", b'"label"', not_utf8, long_number, deep):
        r = requests.post(url, data=raw, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body", r.text
    # A JSON object sent without a JSON Content-Type is never parsed: the error says which header to send.
    for headers in ({"Content-Type": "text/plain"}, {}):
        r = requests.post(url, data=b'{"label": 1}', headers=headers, timeout=60)
        detail = r.json()["detail"][0]
        assert r.status_code == 422 and detail["field"] == "body" and "Content-Type" in detail["message"], r.text
    # Oversized bodies: by Content-Length, and streamed (chunked, no Content-Length).
    big = json.dumps({"label": 1, "prompt": "z" * 200_000}).encode()
    r = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"
    r = requests.post(
        url,
        data=(big[i : i + 8192] for i in range(0, len(big), 8192)),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413
    # Wrong method / unknown path are 4xx too.
    assert requests.get(url, timeout=60).status_code == 405
    assert requests.get(f"{base}/class/v1/nothing", timeout=60).status_code == 404
    for app in ("class", "text"):
        assert requests.get(f"{base}/{app}/healthz", timeout=60).status_code == 200
    assert _post(url, {"label": 1, "steps": 2}).status_code == 200  # still serving


def test_bearer_auth(server):
    base = server["base"]
    body = {"prompt": "a cat", "steps": 2}
    assert requests.get(f"{base}/text/healthz", timeout=60).status_code == 200  # open
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ):
        r = _post(f"{base}/text/v1/generate", body, headers=headers)
        assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer", (headers, r.text)
        assert r.json()["detail"][0]["field"] == "Authorization"
        # The token is checked before the body: a malformed body tells an unauthenticated client nothing.
        assert _post(f"{base}/text/v1/generate", {"prompt": 5}, headers=headers).status_code == 401
        raw = requests.post(f"{base}/text/v1/generate", data=b"{bad", headers=headers, timeout=60)
        assert raw.status_code == 401, raw.text
        assert requests.get(f"{base}/text/v1/model", headers=headers, timeout=60).status_code == 401
    r = _post(f"{base}/text/v1/generate", {**body, "seed": 3}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    # This app's ingress user_config lowers max_body_bytes to 20,000: a 30 kB body (under the default) is a 413.
    r = _post(f"{base}/text/v1/generate", {**body, "negative_prompt": "z" * 30_000}, headers=AUTH)
    assert r.status_code == 413 and "20000 bytes" in r.text, r.text
    assert requests.get(f"{base}/text/v1/model", headers=AUTH, timeout=60).status_code == 200
    # Auth off on the class app: no token needed.
    assert _post(f"{base}/class/v1/generate", {"label": 1, "steps": 2}).status_code == 200


def test_overload_gets_fast_503(server):
    """Sampler with max_ongoing_requests=1, max_queued_requests=1: a burst is shed with 503, not queued."""
    url = f"{server['base']}/text/v1/generate"
    with ThreadPoolExecutor(12) as pool:
        rs = list(pool.map(lambda i: _post(url, {"prompt": "a dog", "steps": 30, "seed": i}), range(12)))
    statuses = sorted(r.status_code for r in rs)
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    shed = next(r for r in rs if r.status_code == 503)
    assert shed.headers.get("retry-after") == "1" and "overloaded" in shed.json()["error"]


def test_killed_replica_is_replaced(server):
    import ray

    url = f"{server['base']}/class/v1/generate"
    body = {"label": 7, "seed": 42, "steps": 3}
    before = _post(url, body)
    assert before.status_code == 200

    def sampler_replicas() -> set[str]:
        return {
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::class#Sampler#")
        }

    victims = sampler_replicas()
    assert len(victims) == 1, victims
    victim = victims.pop()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    deadline = time.monotonic() + 120
    while True:
        r = _post(url, body)
        if r.status_code == 200:
            break
        assert r.status_code in (500, 502, 503), r.text  # transient while the controller replaces the replica
        assert time.monotonic() < deadline, "sampler replica was not replaced in time"
        time.sleep(0.5)
    assert r.content == before.content  # same checkpoint, same seed -> same image
    assert victim not in sampler_replicas() and sampler_replicas()
    assert requests.get(f"{server['base']}/class/healthz", timeout=60).status_code == 200


def test_loadtest_cli_against_running_app(server, capsys):
    from serve.cli.loadtest import main

    rc = main(
        ["--url", f"{server['base']}/class", "--concurrency", "1,3", "--requests", "3", "--steps", "2", "--warmup", "0"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "p99 ms" in out and "{'200': 3}" in out
    # Two images a request come back as JSON, without the PNG's batch header: the batch size is read from the body
    # (it was NaN).
    body = '{"label": 1, "num_images": 2}'
    argv = ["--url", f"{server['base']}/class", "--concurrency", "1", "--requests", "2", "--steps", "2"]
    assert main([*argv, "--warmup", "0", "--body", body, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["mean_batch_images"] >= 2
    # Without the text app's token the default body cannot be chosen: exit 2 naming --token, before any load.
    assert main(["--url", f"{server['base']}/text", "--requests", "1", "--token", ""]) == 2
    assert "--token" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Config file (no Ray needed)
# ---------------------------------------------------------------------------------------------


def test_config_yaml_loads_through_serve_schema():
    from ray.serve.schema import ServeDeploySchema

    from ditcore.config import ConfigError
    from serve.app import build_app, make_app
    from serve.batching import SamplerUserConfig as SamplerSettings
    from serve.deploy import load_app_config
    from serve.ingress import IngressSettings

    raw = yaml.safe_load((REPO_ROOT / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app"
    deps = {d.name: d for d in app.deployments}
    assert set(deps) == {"Ingress", "Sampler"}
    sampler = deps["Sampler"]
    assert sampler.autoscaling_config["min_replicas"] >= 1 and sampler.autoscaling_config["max_replicas"] >= 1
    assert "target_ongoing_requests" in sampler.autoscaling_config
    assert sampler.ray_actor_options.num_gpus == 1
    assert sampler.max_queued_requests > 0 and sampler.max_ongoing_requests >= sampler.user_config["max_batch_size"]
    assert deps["Ingress"].max_queued_requests > 0
    SamplerSettings.from_user_config(sampler.user_config)
    # Defaults a request could not ask for, and a body limit that refuses every request, name the key.
    for bad, key in (({"default_steps": 500}, "default_steps"), ({"default_guidance": 50.0}, "default_guidance")):
        with pytest.raises(ConfigError, match=key):
            SamplerSettings.from_user_config({**sampler.user_config, **bad})
    with pytest.raises(ConfigError, match="max_body_bytes: 0"):
        IngressSettings(max_body_bytes=0)
    from ditcore.config import from_dict

    from_dict(IngressSettings, deps["Ingress"].user_config)
    # The same file drives `ditscale serve`: builds an Application with the file's deployment options.
    _, app_raw = load_app_config(str(REPO_ROOT / "serve" / "config.yaml"))
    opts = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app_raw["deployments"]}
    make_app({"checkpoint": "/nonexistent/is/not/read/here"}, opts)
    # Serve calls an application builder with exactly one argument, the `args` mapping.
    import inspect

    assert len(inspect.signature(build_app).parameters) == 1
    build_app(app_raw["args"])
    # Typos fail early and name the key.
    with pytest.raises(ConfigError, match="default_stepz"):
        SamplerSettings.from_user_config({"default_stepz": 3})
    with pytest.raises(ConfigError, match="default_sampler"):
        SamplerSettings.from_user_config({"default_sampler": "nope"})
    with pytest.raises(ConfigError, match="checkpoint"):
        make_app({})
    with pytest.raises(ConfigError, match="Samplr"):
        make_app({"champion": True}, {"Samplr": {}})


def _serve_logs() -> list[list[str]]:
    """The lines of each of this Ray session's Serve log files (replicas, proxy, controller)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [f.read_text(errors="replace").splitlines() for f in logs.glob("*.log")]


def _logged_with_traceback(request_id: str) -> list[str]:
    """The 'generation failed' record naming `request_id` and the traceback logged with it ([] until flushed)."""
    for lines in _serve_logs():
        for k, line in enumerate(lines):
            if "generation failed" in line and request_id in line:
                return lines[k : k + 40]
    return []


def test_internal_error_is_a_500_with_request_id_and_no_exception_text(server):
    """Model statistics that cannot be read (a corrupt dpmsolver-v3 file beside the checkpoint) fail inside the
    replica: the client gets a 500 that carries the request id and none of the exception's text (no paths, no
    exception type); the replica's log holds the exception and its traceback under that id."""
    from pipelines.checkpoint_extras import ems_name

    (Path(server["class_ckpt"]) / ems_name(2.75)).write_bytes(b"not a safetensors file")
    url = f"{server['base']}/class/v1/generate"
    r = _post(url, {"label": 1, "steps": 2, "sampler": "dpmsolver-v3", "guidance": 2.75, "seed": 4})
    assert r.status_code == 500, r.text
    body = r.json()
    rid = r.headers["X-Request-Id"]
    assert body["request_id"] == rid and "," not in rid  # one id: the header Serve's proxy sets and the body agree
    assert "request id" in body["error"]
    for leaked in ("Traceback", "Error:", "ems", "statistics", "safetensors", str(server["class_ckpt"]), "/tmp"):
        assert leaked not in r.text, (leaked, r.text)
    deadline = time.monotonic() + 60
    while not (record := _logged_with_traceback(rid)) and time.monotonic() < deadline:  # log files flush async
        time.sleep(0.2)
    assert record and record[1].startswith("Traceback"), record[:3]
    assert any("Error" in line and "Traceback" not in line for line in record[1:]), record  # the exception
    assert _post(url, {"label": 1, "steps": 2}).status_code == 200  # the replica still serves


def test_over_long_prompt_is_a_4xx_naming_the_token_limit(server):
    """MiniLM's window is 32 tokens: a longer prompt (well under the 1000-character body limit) is refused with
    the limit named, never silently truncated; one that fits is served."""
    url = f"{server['base']}/text/v1/generate"
    long_prompt = "a red square next to a blue circle " * 8  # ~64 tokens, 288 characters
    for field, body in (
        ("prompt", {"prompt": long_prompt, "steps": 2}),
        ("negative_prompt", {"prompt": "a cat", "negative_prompt": long_prompt, "steps": 2}),
    ):
        r = _post(url, body)
        assert 400 <= r.status_code < 500, r.text
        detail = r.json()["detail"]
        assert any(d["field"] == field and "32 tokens" in d["message"] for d in detail), r.text
    assert _post(url, {"prompt": "a red square next to a blue circle", "steps": 2}).status_code == 200
    # Unguided, the negative prompt is dropped, not read: its length is no reason to refuse the request.
    r = _post(url, {"prompt": "a cat", "negative_prompt": long_prompt, "steps": 2, "guidance": 1.0})
    assert r.status_code == 200 and json.loads(r.headers["X-Ditscale-Settings"])["negative_prompt"] is None
