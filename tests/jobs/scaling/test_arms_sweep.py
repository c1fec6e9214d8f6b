"""A tiny architecture-arms sweep (MM-DiT arm vs text U-Net arm) on a local Ray: every point carries its arm, both
arms finish, and `ditscale fit` on the record names what is missing for the per-arm laws (two budgets)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from jobs.cli.fit import main as fit_main
from tests.conftest import REPO_ROOT
from tests.jobs._train_helpers import TEXT_BUILTIN, make_eval_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_eval_dataset(tmp_path_factory.mktemp("armsdata"), n=16, **TEXT_BUILTIN)[0]


@pytest.mark.slow
def test_arms_sweep_on_local_ray(tmp_path, dataset, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {
        "name": "arms",
        "output": str(tmp_path / "sweeps"),
        "base": {
            "data": {"manifest": dataset, "batch_size": 8, "val_samples": 4},
            "optim": {"warmup_steps": 1, "lr": 0.003, "decay_fraction": 0.5},
            "eval": {"num_samples": 8, "sampler": "euler", "steps": 2, "num_actors": 0},
            "run": {"num_workers": 1, "cpus_per_worker": 1},
            "checkpoint": {"every_n_steps": 0},
            "mlflow": {"log_every": 2},
        },
        "arms": {
            "dit": [{"preset": "MMDiT-T", "overrides": {"depth": 1}}],
            "unet": [{"preset": "UNet-T-text", "overrides": {"hidden_size": 16, "head_channels": 16}}],
        },
        "budgets": [8.0e8, 1.6e9],  # 2 and 4 U-Net steps, ~10 and ~20 MM-DiT steps (batch 8)
        "mode": "wsd",
        "max_concurrent": 2,
        "num_cpus": 4,
        "mlflow": {"tracking_uri": uri, "experiment": "arms-test"},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "jobs.sweep", "--config", str(path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    from mlflow import MlflowClient

    from jobs.scaling.points import read_points

    _, points = read_points(MlflowClient(tracking_uri=uri), experiment="arms-test")
    by_arm: dict[str, list] = {}
    for p in points:
        by_arm.setdefault(p.arm, []).append(p)
    assert sorted(by_arm) == ["dit", "unet"]
    for arm, pts in by_arm.items():
        assert sorted(p.budget_flops for p in pts) == pytest.approx(cfg["budgets"]), arm
        assert all(p.fid is not None and p.val_loss is not None for p in pts), arm
    assert all(p.model.startswith("UNet") for p in by_arm["unet"]) and all(
        p.model.startswith("MMDiT") for p in by_arm["dit"]
    )

    # Two budgets are too few for a law: the fit says so (exit 2) instead of writing a report.
    rc = fit_main(["--experiment", "arms-test", "--tracking-uri", uri, "--out", str(tmp_path / "fit"), "--no-log"])
    assert rc == 2 and ">= 3 distinct compute budgets" in capsys.readouterr().err
    assert not (tmp_path / "fit" / "fit_report.json").exists()
