"""bench/gpu_check.sh on a machine without CUDA: a clear message and exit 0; its four parts run (tiny models, CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    out = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "no CUDA device" in out.stdout and "nothing measured" in out.stdout
    assert "MFU" not in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_gpu_check_fails_where_the_machine_has_gpus_torch_cannot_use(tmp_path):
    """A CPU-only torch on a GPU machine measured nothing and exited 0: a check gate passed. A stand-in
    nvidia-smi on PATH lists a GPU here."""
    import os

    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    out = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "nvidia-smi lists GPUs but torch" in out.stderr and "sees no CUDA device" in out.stderr


def test_gpu_check_parts_run_on_tiny_models():
    out = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--smoke-cpu"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert sum("MFU" in line for line in lines) == 2  # DiT and MM-DiT training lines
    assert any(line.startswith("fid-sampling") and "img/s" in line for line in lines)
    assert any(line.startswith("service (GenerationPipeline") and "img/s" in line for line in lines)
    assert "FAILED" not in out.stdout


def test_gpu_check_runs_only_the_chosen_parts_and_names_a_bad_one():
    run = [sys.executable, "bench/gpu_check.py", "--smoke-cpu", "--parts"]
    out = subprocess.run([*run, "sampling"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert any(line.startswith("fid-sampling") for line in out.stdout.splitlines())
    assert "MFU" not in out.stdout and "service" not in out.stdout
    bad = subprocess.run([*run, "train,trian"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown ['trian']" in bad.stderr and "MFU" not in bad.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_profile_without_cuda_says_so_and_exits_0():
    out = subprocess.run(
        [sys.executable, "bench/gpu_profile.py"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "no CUDA device" in out.stdout and "nothing profiled" in out.stdout


def test_gpu_profile_sorts_kernels_into_kinds():
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        from gpu_profile import kind
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    # cuDNN's attention kernels carry "sm90" like the matmuls: attention must win
    assert kind("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128") == "attention"
    assert kind("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN") == "matmul"
    assert kind("triton_poi_fused_gelu_gelu_backward_view_13") == "triton (fused elementwise, norms)"
    assert kind("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer / grad norm"
    assert kind("void at::native::vectorized_elementwise_kernel<4, FillFunctor>") == "other"


_FSDP_STEP = """
import sys, torch
sys.path.insert(0, "bench")
import gpu_check
gpu_check.DEVICE.update(name="cpu", tiny=True)
for precision in ("autocast", "fsdp-bf16"):
    step, cfg = gpu_check.train_step("DiT-T/2", {}, 2, False, precision)
    full = lambda p: p.full_tensor() if hasattr(p, "full_tensor") else p
    before = {n: full(p.detach()).clone() for n, p in step.model.named_parameters()}
    seen = []
    lin = next(m for n, m in step.model.named_modules() if n.startswith("blocks.") and isinstance(m, torch.nn.Linear))
    lin.register_forward_hook(lambda m, i, o: seen.append((m.weight.dtype, o.dtype)))
    step()
    after = {n: full(p.detach()) for n, p in step.model.named_parameters()}
    print(f"{precision} param dtypes:", sorted({str(p.dtype) for p in after.values()}))
    print(f"{precision} block linear:", seen[0])
    print(f"{precision} changed:", sorted(n for n in before if not torch.equal(before[n], after[n])))
try:
    gpu_check.train_step("DiT-T/2", {}, 2, False, "fp8")
except ValueError as e:
    print("bad:", e)
"""


def test_gpu_check_fsdp_bf16_step_computes_blocks_in_bf16_and_updates_fp32_parameters():
    out = subprocess.run([sys.executable, "-c", _FSDP_STEP], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    said = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    for prec in ("autocast", "fsdp-bf16"):
        assert said[f"{prec} param dtypes"] == "['torch.float32']"
    # autocast: fp32 weights, bf16 output; FSDP2 bf16: the block's weight itself is bf16 during compute
    assert said["autocast block linear"] == "(torch.float32, torch.bfloat16)"
    assert said["fsdp-bf16 block linear"] == "(torch.bfloat16, torch.bfloat16)"
    # the same parameters move in one step either way (adaLN-Zero's zero-initialised layers keep some still)
    assert said["autocast changed"] == said["fsdp-bf16 changed"] != "[]", out.stdout
    assert said["bad"] == "precision must be one of ('autocast', 'fsdp-bf16'), got 'fp8'"
