"""Precompute with several text encoders joined SD3 style (tiny local CLIP + T5, no downloads): the manifest records
the list and the joined dims, the rows and the null embedding have the joined shapes, MM-DiT's text fields come from
the manifest, and data.text_dropout is checked against the recorded encoder names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditcore.config import ConfigError, from_dict
from jobs.train.config import TrainConfig
from jobs.train.plan import resolve_run
from pipelines.encoders.text import load_text_encoders
from pipelines.latents.reader import load_latents_numpy, load_null_text, read_manifest
from pipelines.precompute.job import PrecomputeConfig, run_precompute
from pipelines.precompute.plan import validate
from tests.pipelines._precompute_helpers import ray_module, tiny_clip, tiny_t5, tiny_vae

pytestmark = pytest.mark.slow  # one end-to-end Ray precompute


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi-text")
    text = [
        {"encoder": str(tiny_clip(d / "clip")), "name": "clip", "max_length": 16},
        {"encoder": str(tiny_t5(d / "t5")), "name": "t5", "max_length": 12, "join": "append", "pooled": False},
    ]
    cfg = {
        "output": str(d / "out"),
        "image_size": 32,
        "progress": False,
        "source": {"kind": "builtin", "count": 6, "shard_size": 6},
        "vae": {"path": str(tiny_vae(d / "vae"))},
        "fid": None,
        "text": text,
        "compute": {"batch_size": 8, "actors": 1},
    }
    gen = ray_module()
    next(gen)
    try:
        summary = run_precompute(from_dict(PrecomputeConfig, cfg))
    finally:
        gen.close()
    return d, cfg, summary


def test_manifest_records_the_list_and_joined_dims(run):
    d, cfg, summary = run
    assert summary["written"] == 6
    m = read_manifest(cfg["output"])
    t = m.text
    assert t.kind == "multi" and t.encoder == "clip+t5"
    assert (t.max_length, t.dim, t.pooled_dim) == (16 + 12, 32, 16)  # T5's 32-d block; CLIP's projected pooled only
    assert [(p.name, p.join, p.seq, p.feat, p.pooled_slice) for p in t.encoders] == [
        ("clip", "concat", [0, 16], [0, 32], [0, 16]),
        ("t5", "append", [16, 28], [0, 32], None),
    ]
    assert m.columns["text_emb"].shape == [28, 32] and m.columns["text_mask"].shape == [28]
    assert m.columns["text_pooled"].shape == [16]
    null = load_null_text(cfg["output"])
    assert tuple(null["text_emb"].shape) == (28, 32) and tuple(null["text_pooled"].shape) == (16,)


def test_rows_hold_the_joined_encoding_of_their_captions(run):
    _, cfg, _ = run
    rows = load_latents_numpy(cfg["output"])
    enc = load_text_encoders(cfg["text"], dtype="float32").encode([str(c) for c in rows["caption"]])
    np.testing.assert_allclose(rows["text_emb"].astype(np.float32), enc["text_emb"].astype(np.float32), atol=2e-3)
    np.testing.assert_array_equal(rows["text_mask"], enc["text_mask"])
    # Both blocks hold real tokens: CLIP's positions and T5's positions after them.
    assert rows["text_mask"][:, :16].any(1).all() and rows["text_mask"][:, 16:].any(1).all()


def test_mmdit_fields_and_text_dropout_come_from_the_manifest(run):
    _, cfg, _ = run
    base = {
        "model": {"preset": "MMDiT-T"},
        "data": {"manifest": cfg["output"], "batch_size": 4, "val_samples": 0, "text_dropout": {"t5": 0.5}},
        "budget_flops": 1e9,
        "mlflow": {"enabled": False},
    }
    plan = resolve_run(from_dict(TrainConfig, base), check_mlflow=False)
    mc = plan.model_config
    assert (mc["text_dim"], mc["pooled_dim"], mc["max_text_len"]) == (32, 16, 28)
    bad = {**base, "data": {**base["data"], "text_dropout": {"t6": 0.5}}}
    with pytest.raises(ConfigError, match=r"data.text_dropout.t6: .*encoders: \['clip', 't5'\]"):
        resolve_run(from_dict(TrainConfig, bad), check_mlflow=False)
    bad = {**base, "data": {**base["data"], "text_dropout": {"t5": 1.5}}}
    with pytest.raises(ConfigError, match=r"data.text_dropout.t5: 1.5 is not in \[0, 1\]"):
        resolve_run(from_dict(TrainConfig, bad), check_mlflow=False)


def test_bad_encoder_list_fails_before_any_work(run, tmp_path):
    d, cfg, _ = run
    bad = {**cfg, "output": str(tmp_path / "never"), "text": [cfg["text"][0], {**cfg["text"][1], "join": "side"}]}
    with pytest.raises(ConfigError, match=r"text\[1\].join: 'side'"):
        validate(from_dict(PrecomputeConfig, bad))
    assert not (tmp_path / "never" / "manifest.json").exists()


def test_train_with_per_encoder_dropout_then_sample_without_t5(run, tmp_path):
    """A few MM-DiT steps with data.text_dropout (the train loop's path), then generation with T5 dropped: only the
    T5 block of a prompt's embedding changes, to the null embedding's T5 block, and T5 is not loaded."""
    from jobs.train.driver import run_local
    from pipelines.generation import GenerationPipeline, SamplerSettings

    _, cfg, _ = run
    train = {
        "model": {"preset": "MMDiT-T"},
        "data": {
            "manifest": cfg["output"],
            "batch_size": 4,
            "val_samples": 2,
            "text_dropout": {"t5": 0.5, "clip": 0.5},
        },
        "budget_flops": 1e9,
        "mlflow": {"enabled": False},
        "eval": {"num_samples": 0},
        "optim": {"warmup_steps": 1},
        "checkpoint": {"every_n_steps": 1000},
    }
    tc = from_dict(TrainConfig, train)
    steps_flops = resolve_run(tc, check_mlflow=False).flops["train_flops_per_image"] * 4 * 3
    train["budget_flops"] = steps_flops
    out = run_local(from_dict(TrainConfig, train), str(tmp_path / "ckpt"))
    assert out["status"] == "finished" and out["steps"] == 3 and np.isfinite(out["loss"])
    full = GenerationPipeline(out["last_checkpoint"], device="cpu")
    no_t5 = GenerationPipeline(out["last_checkpoint"], device="cpu", drop_text=["t5"])
    assert set(no_t5.text_encoder.encoders) == {"clip"}
    prompt = "a small red circle"
    a, b = full.encode_prompt(prompt), no_t5.encode_prompt(prompt)
    null = full.null_text
    assert torch.equal(a["text_emb"][:16], b["text_emb"][:16]) and torch.equal(a["text_pooled"], b["text_pooled"])
    assert torch.equal(b["text_emb"][16:], null["text_emb"][16:]) and torch.equal(
        b["text_mask"][16:], null["text_mask"][16:]
    )
    assert not torch.equal(a["text_emb"][16:], b["text_emb"][16:])
    settings = SamplerSettings(sampler="euler", steps=2)
    za = full.latents(full.prompt_conditions([prompt])[0], [0], settings)
    zb = no_t5.latents(no_t5.prompt_conditions([prompt])[0], [0], settings)
    assert za.shape == zb.shape and torch.isfinite(zb).all()
    with pytest.raises(Exception, match="drop_text: unknown text encoder"):
        GenerationPipeline(out["last_checkpoint"], device="cpu", drop_text=["t6"])
