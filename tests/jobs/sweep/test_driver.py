"""Sweep driver: a tiny 2-model x 2-budget WSD grid end to end (Ray Tune -> Ray Train -> FID -> MLflow), with the
driver SIGKILLed after the first trial completes and restarted: only the missing trial runs, and the MLflow
record (parent run, one child per trial, points.json) reads back through MlflowClient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ditcore.config import ConfigError
from jobs.cli.sweep import main
from jobs.sweep.driver import load_sweep_config
from jobs.sweep.grid import expand_grid
from tests.conftest import REPO_ROOT
from tests.jobs._train_helpers import make_eval_assets, make_latent_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("sweepdata")
    assets = make_eval_assets(root / "assets")
    return make_latent_dataset(
        root / "lat",
        n=16,
        num_classes=None,
        text=(8, 16, 16),
        builtin=True,
        vae_path=assets["vae_path"],
        feature_net=assets["feature_net"],
        fid_stats=assets["fid_stats"],
    )


def _write_cfg(tmp_path: Path, dataset: str, **extra) -> Path:
    cfg = {
        "name": "t",
        "output": str(tmp_path / "sweeps"),
        "base": {
            "model": {"preset": "MMDiT-T"},
            "data": {"manifest": dataset, "batch_size": 8, "val_samples": 4},
            "optim": {"warmup_steps": 1, "lr": 0.003, "decay_fraction": 0.5},
            "eval": {"num_samples": 8, "sampler": "euler", "steps": 2},
            "run": {"num_workers": 1, "cpus_per_worker": 1},
            "mlflow": {"log_every": 2},
        },
        "models": [{"depth": 1}, "MMDiT-T"],
        "budgets": [1.0e15],
        "mode": "wsd",
        "max_concurrent": 1,
        "num_cpus": 4,
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "sweep-test"},
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _budgets(path: Path, steps: tuple[int, ...]) -> list[float]:
    """Budgets (FLOPs) giving `steps` optimizer steps for the LARGER model of the grid."""
    from jobs.train.plan import resolve_run

    trials = expand_grid(load_sweep_config(str(path)))
    one = resolve_run(trials[-1].train, check_mlflow=False).train_flops_per_image * 8
    return [one * s for s in steps]


def test_bad_sweep_config_names_the_key(tmp_path, dataset):
    path = _write_cfg(tmp_path, dataset, budgets=[1e9])
    with pytest.raises(ConfigError, match="base.optim.learning_rate"):
        expand_grid(load_sweep_config(str(path), ["base.optim.learning_rate=1"]))
    with pytest.raises(ConfigError, match="unknown config key"):
        load_sweep_config(str(path), ["bogus=1"])
    assert main(["--config", str(path), "budgets=[10]", "--validate-only"]) == 2  # < one step: named, exit 2


@pytest.mark.slow
def test_sweep_end_to_end_with_killed_driver_resume(tmp_path, dataset):
    path = _write_cfg(tmp_path, dataset)
    cfg = yaml.safe_load(path.read_text())
    cfg["budgets"] = _budgets(path, (2, 4))
    path.write_text(yaml.safe_dump(cfg))
    trials = expand_grid(load_sweep_config(str(path)))
    tdir = tmp_path / "sweeps" / "t" / "trials"
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    # 1) Start the driver; SIGKILL it (and the local Ray it started) once the first trial is marked done.
    log1 = open(tmp_path / "driver1.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:
            done = list(tdir.glob("*/done.json")) if tdir.exists() else []
            if done or proc.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        log1.close()
    done_first = sorted(p.parent.name for p in tdir.glob("*/done.json"))
    assert len(done_first) >= 1, (tmp_path / "driver1.log").read_text()[-3000:]
    first_record = (tdir / done_first[0] / "done.json").read_text()

    # 2) Restart with the same config: only the missing trial runs.
    out = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400, start_new_session=True
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{len(done_first)} already done, {len(trials) - len(done_first)} to run" in out.stdout
    assert (tdir / done_first[0] / "done.json").read_text() == first_record  # finished trial untouched

    # 3) The MLflow record, read back through the client.
    from mlflow import MlflowClient

    from pipelines.infra.tracking import child_runs, find_parent_run, load_points

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = find_parent_run(client, "sweep-test")
    assert parent.data.tags["ditscale.role"] == "sweep" and parent.info.status == "FINISHED"
    children = [r for r in child_runs(client, parent.info.run_id) if r.data.tags.get("ditscale.role") == "trial"]
    assert sorted(r.data.tags["ditscale.trial_id"] for r in children) == sorted(t.trial_id for t in trials)
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("model", "params", "train_flops_per_image", "budgets", "lr", "batch_size", "data_manifest"):
            assert key in run.data.params
        assert {"loss", "val_loss", "images_per_s", "mfu", "train_flops", "fid"} <= set(run.data.metrics)
        points = load_points(client, run.info.run_id)
        assert [p["budget_flops"] for p in points] == pytest.approx(cfg["budgets"])
        for p in points:
            assert p["fid"] is not None and p["fid"] >= 0 and p["val_loss"] is not None
            assert Path(p["checkpoint"]).is_dir() and p["params"] > 0
        # WSD: the small budget branches from the main run's checkpoint at its decay start.
        assert points[0]["run"].endswith("-b0") and points[1]["run"].endswith("-main")
    record = json.loads(first_record)
    assert record["status"] == "finished" and len(record["points"]) == 2
