"""Big-model training levers on CPU: activation checkpointing gives the same gradients; gradient accumulation gives
the same update as the whole batch; FSDP2 (gloo) with micro-batches, checkpointed blocks, meta-device init and
sharded torch.distributed.checkpoint checkpoints ends where one plain worker does, and a sharded checkpoint written
by 2 workers resumes on 1; the bf16 FSDP2 policy trains with fp32 parameters; bad lever settings are named."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ditcore.config import ConfigError
from ditcore.models import build_model, config_from_dict
from ditcore.models.layers import set_activation_checkpointing
from jobs.train.driver import run_local, run_training
from jobs.train.plan import resolve_run
from tests.jobs._train_helpers import TINY_OPTIM, budget_override, config_maker, local_ray

_cfg = config_maker("mlflow.enabled=false", *TINY_OPTIM, "run.deterministic=true", "mlflow.log_every=2")


def _close(a_dir: Path, b_dir: Path, names=("model", "ema"), atol=2e-6) -> None:
    moved = False
    for name in names:
        a, b = load_file(str(a_dir / f"{name}.safetensors")), load_file(str(b_dir / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=f"{name} {k} differs")
            moved |= name == "model" and bool(a[k].abs().sum() > 0) and "final_layer" in k
    assert moved  # adaLN-Zero: the zero-initialised output layer has really been trained


@pytest.mark.parametrize("preset", ["DiT-T/2", "MMDiT-T"])
def test_activation_checkpointing_gives_identical_gradients(preset):
    from ditcore.models import PRESETS, config_to_dict

    d = {**config_to_dict(PRESETS[preset]), "input_size": 8, "in_channels": 4, "depth": 2}
    if d["arch"] == "mmdit":
        d.update(text_dim=16, pooled_dim=16, max_text_len=8)
    torch.manual_seed(0)
    model = build_model(config_from_dict(d))
    for p in model.parameters():  # leave adaLN-Zero so every block contributes to the gradients
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3)
    cond = (
        (torch.tensor([0, 1, 2]),)
        if d["arch"] == "dit"
        else (torch.randn(3, 8, 16), torch.ones(3, 8, dtype=torch.bool), torch.randn(3, 16))
    )

    def grads(checkpointed: bool) -> dict[str, torch.Tensor]:
        set_activation_checkpointing(model, checkpointed)
        model.zero_grad(set_to_none=True)
        model(x, t, *cond).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref, ckpt = grads(False), grads(True)
    assert any(v.abs().sum() > 0 for k, v in ref.items() if k.startswith(("blocks", "joint_blocks")))
    for k in ref:
        torch.testing.assert_close(ckpt[k], ref[k], atol=0, rtol=0, msg=f"grad {k} differs")


def test_grad_accumulation_equals_the_whole_batch(data8, tmp_path):
    cfg = _cfg(data8, tmp_path)
    steps = budget_override(cfg, 3)
    run_local(_cfg(data8, tmp_path, steps, "run.name=whole"), str(tmp_path / "whole"))
    run_local(_cfg(data8, tmp_path, steps, "run.name=acc", "run.grad_accum=4"), str(tmp_path / "acc"))
    ck = "checkpoints/step_00000003"
    _close(tmp_path / "acc" / ck, tmp_path / "whole" / ck)


def test_bad_lever_settings_are_named(data8, tmp_path):
    with pytest.raises(ConfigError, match=r"run.num_workers x run.grad_accum = 1 x 3"):
        resolve_run(_cfg(data8, tmp_path, "run.grad_accum=3"), check_mlflow=False)
    with pytest.raises(ConfigError, match=r"run.grad_accum must be >= 1, got 0"):
        resolve_run(_cfg(data8, tmp_path, "run.grad_accum=0"), check_mlflow=False)
    with pytest.raises(ConfigError, match=r"run.meta_init=true needs run.fsdp=true"):
        resolve_run(_cfg(data8, tmp_path, "run.meta_init=true"), check_mlflow=False)
    with pytest.raises(ConfigError, match=r"run.fsdp_mixed_precision='bf16' needs run.fsdp=true"):
        resolve_run(_cfg(data8, tmp_path, "run.fsdp_mixed_precision=bf16"), check_mlflow=False)
    with pytest.raises(ConfigError, match=r"run.fsdp_mixed_precision"):
        resolve_run(_cfg(data8, tmp_path, "run.fsdp_mixed_precision=fp8"), check_mlflow=False)


@pytest.fixture(scope="module")
def ray_local():  # 2 CPUs here (the conftest's has 4)
    yield from local_ray(2)


@pytest.mark.slow
def test_fsdp_levers_and_sharded_checkpoint_resume_on_fewer_workers(ray_local, data8, tmp_path):
    """2 FSDP2 workers x 2 micro-batches, checkpointed blocks, meta-device init, sharded checkpoints: the run ends
    where one plain worker does; its step-2 checkpoint (dcp/, no full weights) resumes on 1 worker to the same end."""
    cfg = _cfg(data8, tmp_path)
    steps = budget_override(cfg, 4)
    levers = [
        "run.fsdp=true",
        "run.num_workers=2",
        "run.cpus_per_worker=1",
        "run.grad_accum=2",
        "run.activation_checkpointing=true",
        "run.meta_init=true",
        "checkpoint.sharded=true",
        "checkpoint.every_n_steps=2",
    ]
    out = run_training(_cfg(data8, tmp_path, steps, "run.name=big", *levers))
    assert out["status"] == "finished" and out["steps"] == 4
    ckpts = Path(out["run_dir"]) / "checkpoints"
    two, four = ckpts / "step_00000002", ckpts / "step_00000004"
    assert (two / "dcp" / ".metadata").exists() and not (two / "model.safetensors").exists()
    assert len(list((two / "dcp").glob("*.distcp"))) == 2  # one shard file per worker, no gather
    run_local(_cfg(data8, tmp_path, steps, "run.name=plain"), str(tmp_path / "plain"))
    _close(four, tmp_path / "plain" / "checkpoints" / "step_00000004")
    resumed = run_local(
        _cfg(data8, tmp_path, steps, "run.name=resumed", f"checkpoint.init_from={two}"), str(tmp_path / "res")
    )
    assert resumed["steps"] == 4
    _close(tmp_path / "res" / "checkpoints" / "step_00000004", four)


@pytest.mark.slow
def test_fsdp_bf16_policy_trains_with_fp32_parameters(ray_local, data8, tmp_path):
    bf16 = ["run.fsdp=true", "run.num_workers=2", "run.fsdp_mixed_precision=bf16", "run.deterministic=false"]
    out = run_training(_cfg(data8, tmp_path, "run.name=bf16", *bf16, steps=4))
    assert out["status"] == "finished" and out["steps"] == 4
    w = load_file(str(Path(out["run_dir"]) / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in w.values())
    assert any(v.abs().sum() > 0 for k, v in w.items() if k.startswith("final_layer"))


@pytest.mark.slow
def test_sharded_checkpoints_on_s3_resume(ray_local, data8, tmp_path, s3_bucket, monkeypatch):
    """checkpoint.sharded with S3 storage: each rank uploads its dcp/ files and checkpoint.json comes last, listing
    every file; the periodic step-1 checkpoint (no whole weights) resumes in another process to the run's end."""
    from pipelines.infra import storage

    cfg = _cfg(data8, tmp_path)
    steps = budget_override(cfg, 2)
    out = run_training(
        _cfg(
            data8,
            tmp_path,
            steps,
            "run.name=s3sharded",
            f"checkpoint.storage={s3_bucket}/runs",
            "checkpoint.sharded=true",
            "checkpoint.every_n_steps=1",
        )
    )
    assert out["status"] == "finished" and out["steps"] == 2
    root = f"{s3_bucket}/runs/s3sharded/checkpoints"
    one, two = f"{root}/step_00000001", f"{root}/step_00000002"
    listed = storage.read_json(f"{one}/checkpoint.json")["files"]
    assert ".metadata" in storage.listdir(f"{one}/dcp") and "dcp/.metadata" in listed
    assert "model.safetensors" not in listed and "model.safetensors" in storage.listdir(two)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    resumed = run_local(
        _cfg(data8, tmp_path, steps, "run.name=s3res", f"checkpoint.init_from={one}"), str(tmp_path / "s3res")
    )
    assert resumed["steps"] == 2
    assert list(temp.glob("ditscale-*")) == []  # the init_from download is deleted after the run
    _close(tmp_path / "s3res" / "checkpoints" / "step_00000002", Path(storage.download_dir(two, str(tmp_path / "d"))))
