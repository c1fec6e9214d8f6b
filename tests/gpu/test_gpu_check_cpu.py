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
