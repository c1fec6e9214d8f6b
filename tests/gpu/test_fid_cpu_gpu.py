"""bench/fid_cpu_gpu.py on a machine without CUDA: the CPU evaluation runs in its own process, the CUDA run is
skipped with a message, and a CPU result written by --out on one run is read back by --cpu-json on the next and
compared (the CPU path is deterministic, so the two FIDs are equal)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_fid_cpu_gpu_on_cpu_writes_and_compares_results(tmp_path):
    from tests.jobs._train_helpers import TEXT_BUILTIN, make_eval_dataset, perturbed_model, save_model_checkpoint

    data, _ = make_eval_dataset(tmp_path, n=16, **TEXT_BUILTIN)
    model = perturbed_model("MMDiT-T", scale=0.02, text_dim=16, pooled_dim=16, max_text_len=8)
    ckpt = save_model_checkpoint(tmp_path / "ck" / "step_00000001", model, {"manifest": data}, objective={})
    run = [sys.executable, "bench/fid_cpu_gpu.py", "--checkpoint", str(ckpt), "--data", str(data)]
    run += ["--num-samples", "24", "--sampler", "euler", "--steps", "2", "--n-boot", "5", "--threads", "1"]
    first = subprocess.run([*run, "--out", str(tmp_path / "a.json")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no CUDA device" in first.stdout and "the cuda run is skipped" in first.stdout
    a = json.loads((tmp_path / "a.json").read_text())
    assert set(a) == {"cpu"} and a["cpu"]["num_samples"] == 24 and a["cpu"]["fid"] > 0 and a["cpu"]["fid_se"] > 0
    assert a["cpu"]["dtype"] == "fp32" and a["cpu"]["attr_acc"] is not None
    second = subprocess.run(
        [*run, "--devices", "cpu", "--cpu-json", str(tmp_path / "a.json"), "--out", str(tmp_path / "b.json")],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["cpu"]["fid"] == a["cpu"]["fid"] and b["cpu_vs_cpu_elsewhere"]["fid_diff"] == 0.0
    assert "cpu - cpu_elsewhere: +0.000 FID" in second.stdout


def test_fid_cpu_gpu_names_an_unknown_device(tmp_path):
    out = subprocess.run(
        [sys.executable, "bench/fid_cpu_gpu.py", "--checkpoint", "x", "--data", "y", "--devices", "cpu,tpu"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and "unknown ['tpu']" in out.stderr
