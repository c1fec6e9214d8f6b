"""CUDA paths (marked `gpu`; skipped where torch sees no CUDA device): bf16 generation agrees with fp32, the
training loop's levers run on the device, activation checkpointing keeps bf16 gradients, the FID of a checkpoint on
a GPU actor agrees with the CPU path within sampling noise, and bench/gpu_check.py runs end to end."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available())"),
]


def _pixel_checkpoint(tmp_path):
    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import build_model, config_to_dict, resolve_config

    cfg = resolve_config("DiT-T/2", in_channels=3)
    torch.manual_seed(0)
    model = build_model(cfg)
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    return save_checkpoint(
        tmp_path / "step_00000001",
        model=model,
        config={"model": config_to_dict(cfg), "objective": {}, "data": {"space": "pixel"}},
        state={"step": 1},
    )


def test_bf16_generation_agrees_with_fp32(tmp_path):
    from pipelines.generation import GenerationPipeline, SamplerSettings

    ckpt = str(_pixel_checkpoint(tmp_path))
    s = SamplerSettings(sampler="euler", steps=8, guidance=1.5)
    cond = {"y": torch.arange(8) % 10}
    fp32 = GenerationPipeline.from_checkpoint(ckpt, device="cuda", dtype="fp32").generate(cond, range(8), s)
    pipe = GenerationPipeline.from_checkpoint(ckpt, device="cuda")  # auto: bf16 on CUDA
    assert pipe.bf16 and torch.backends.cuda.matmul.allow_tf32
    bf16 = pipe.generate(cond, range(8), s)
    diff = np.abs(fp32.astype(np.int32) - bf16.astype(np.int32))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8  # uint8 levels
    cpu = GenerationPipeline.from_checkpoint(ckpt, device="cpu").generate(cond, range(8), s)
    assert np.abs(cpu.astype(np.int32) - fp32.astype(np.int32)).max() <= 2  # same seeds -> same images


def test_activation_checkpointing_keeps_bf16_gradients():
    from ditcore.models import build_model, resolve_config
    from ditcore.models.layers import set_activation_checkpointing

    torch.manual_seed(0)
    model = build_model(resolve_config("DiT-B/2", input_size=16)).cuda()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x, t, y = torch.randn(4, 4, 16, 16, device="cuda"), torch.rand(4, device="cuda"), torch.arange(4, device="cuda")

    def grads(flag):
        set_activation_checkpointing(model, flag)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, t, y)
        out.float().square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    a, b = grads(False), grads(True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-3, msg=k)


def test_training_levers_on_cuda(tmp_path):
    from jobs.train.config import TrainConfig
    from jobs.train.driver import run_local
    from pipelines.infra.config_files import load_config
    from tests.jobs._train_helpers import make_latent_dataset

    data = make_latent_dataset(tmp_path / "lat", n=16, num_classes=4)
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"data.manifest={data}",
            "data.batch_size=8",
            "data.val_samples=0",
            "model.preset=DiT-T/2",
            f"checkpoint.storage={tmp_path / 'runs'}",
            "mlflow.enabled=false",
            "budget_flops=1e9",
            "run.grad_accum=2",
            "run.activation_checkpointing=true",
            "run.compile=true",
            "mlflow.log_every=2",
        ],
    )
    out = run_local(cfg, str(tmp_path / "run"))
    assert out["status"] == "finished" and math.isfinite(out["loss"])


def _cpu_fid(ckpt: str, data: str, kw: dict) -> float:
    """The same evaluation in a process that sees no CUDA device (the CPU path)."""
    import os

    code = (
        "from jobs.evaluation.fid import evaluate_checkpoint as e; "
        f"print(e({ckpt!r}, {data!r}, num_actors=0, **{kw!r})['fid'])"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.check_output([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, text=True)
    return float(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_fid_on_a_gpu_actor_matches_the_cpu_path(tmp_path):
    """evaluate_checkpoint on a Ray cluster with a GPU: the actor takes it (bf16 autocast); the FID agrees with the
    CPU path within its sampling noise (bootstrap standard error)."""
    import ray

    from jobs.evaluation.fid import evaluate_checkpoint
    from tests.jobs._train_helpers import TEXT_BUILTIN, make_eval_dataset, perturbed_model, save_model_checkpoint

    data, _ = make_eval_dataset(tmp_path, n=16, **TEXT_BUILTIN)
    model = perturbed_model("MMDiT-T", scale=0.02, text_dim=16, pooled_dim=16, max_text_len=8)
    ckpt = save_model_checkpoint(tmp_path / "ck" / "step_00000001", model, {"manifest": data}, objective={})
    kw = dict(num_samples=64, sampler="euler", steps=4, seed=1, n_boot=20)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        gpu = evaluate_checkpoint(ckpt, data, num_actors=1, **kw)
    finally:
        ray.shutdown()
    cpu = _cpu_fid(ckpt, data, kw)
    se = max(float(gpu.get("fid_se") or 0.0), 1e-6)
    assert abs(gpu["fid"] - cpu) <= 3 * se + 0.05 * cpu


def test_gpu_check_script_runs():
    out = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--iters", "2", "--warmup", "1", "--batch", "8", "--mmdit-batch", "4",
         "--sample-batch", "8", "--sample-steps", "2", "--service-images", "8", "--no-compile"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MFU" in out.stdout and "fid-sampling" in out.stdout and "service" in out.stdout
