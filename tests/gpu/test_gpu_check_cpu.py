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
