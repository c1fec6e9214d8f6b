"""A diverged trial fails the sweep: failed.json (never done.json), a FAILED MLflow trial run, a non-zero exit;
the next invocation runs it again; `allow_failures=true` lets the sweep finish with the failure recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT
from tests.jobs.sweep.test_driver import _budgets, _write_cfg, dataset  # noqa: F401 (module-scoped fixture)


def _sweep(path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", str(path), *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


def _one_failed_trial(path, tmp_path):
    """Run the sweep, which must exit 1 with exactly one failed.json: (its record, an MlflowClient on the store)."""
    from mlflow import MlflowClient

    result = _sweep(path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[ditscale] to finish it, rerun the same command" in result.stdout
    (failed,) = (tmp_path / "sweeps" / "t" / "trials").glob("*/failed.json")
    return json.loads(failed.read_text()), MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.slow
def test_diverged_trial_is_failed_rerun_and_fails_the_sweep(tmp_path, dataset):  # noqa: F811
    path = _write_cfg(tmp_path, dataset, models=[{"depth": 1}])
    cfg = yaml.safe_load(path.read_text())
    cfg["budgets"] = _budgets(path, (4,))
    cfg["base"]["debug"] = {"inject_failure": {"step": 2, "mode": "nan"}}  # a non-finite loss from step 2 on
    path.write_text(yaml.safe_dump(cfg))
    tdir = tmp_path / "sweeps" / "t" / "trials"

    first = _sweep(path)
    log = first.stdout[-3000:] + first.stderr[-3000:]
    assert first.returncode == 1, log
    assert "1 to run" in first.stdout, log
    assert not list(tdir.glob("*/done.json")), log
    (failed,) = tdir.glob("*/failed.json")
    record = json.loads(failed.read_text())
    assert record["status"] == "failed" and record["reasons"] and "finite" in " ".join(record["reasons"]), record

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(record["mlflow_run_id"]).info.status == "FAILED"
    # What mup-report reads of it (it has no points): its model, hparams and the divergence as the reason.
    from pipelines.infra.tracking import failed_trials

    parent = client.get_run(record["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
    (seen,) = failed_trials(client, parent)
    assert seen["trial_id"] == record["trial_id"] and seen["model"] == record["name"], seen
    assert "non-finite loss" in seen["failed"] and isinstance(seen["hparams"], dict), seen

    # The next invocation does not take the failure for a result: it runs the trial again. With failures allowed
    # the sweep then completes (exit 0) and the trial stays failed, not done.
    second = _sweep(path, "allow_failures=true")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "0 already done, 1 to run" in second.stdout, second.stdout[-3000:]
    assert list(tdir.glob("*/failed.json")) and not list(tdir.glob("*/done.json"))


@pytest.mark.slow
def test_a_trial_whose_training_raises_is_failed_with_its_reason_not_missing(tmp_path, dataset):  # noqa: F811
    """An exception that exhausts run.max_failures used to escape run_trial: no failed.json, the trial listed as
    missing, its MLflow runs left RUNNING."""
    path = _write_cfg(tmp_path, dataset, models=[{"depth": 1}])
    cfg = yaml.safe_load(path.read_text())
    cfg["budgets"] = _budgets(path, (4,))
    cfg["base"]["debug"] = {"inject_failure": {"step": 2, "mode": "raise"}}
    cfg["base"].setdefault("run", {})["max_failures"] = 0
    path.write_text(yaml.safe_dump(cfg))
    record, client = _one_failed_trial(path, tmp_path)
    assert record["status"] == "failed" and "injected failure at step 2" in " ".join(record["reasons"]), record
    trial = client.get_run(record["mlflow_run_id"])
    assert trial.info.status == "FAILED" and "injected failure" in trial.data.tags["ditscale.failure_reason"]
    runs = client.search_runs([trial.info.experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]

    # Say its checkpoints were written on an older torch (state.json `software`; the manifest keeps their sizes, else
    # they count as damaged). The next invocation, the failure gone, resumes them and names the run at its end.
    states = list((tmp_path / "sweeps" / "t" / "runs").glob("*/*/checkpoints/step_*/state.json"))
    assert states, "no checkpoint before the failure"
    for f in states:
        state = json.loads(f.read_text())
        f.write_text(json.dumps({**state, "software": [{**state["software"][0], "torch": "2.0.1"}]}))
        manifest = json.loads((f.parent / "checkpoint.json").read_text())
        (f.parent / "checkpoint.json").write_text(
            json.dumps({**manifest, "files": {**manifest["files"], "state.json": f.stat().st_size}})
        )
    del cfg["base"]["debug"]  # not part of the trial's settings: the same trial
    path.write_text(yaml.safe_dump(cfg))
    again = _sweep(path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 already done, 1 to run" in again.stdout and "it reuses" not in again.stdout, again.stdout[-3000:]
    said = "finished training run(s) this invocation resumed or started from checkpoints other software wrote: "
    assert f"{said}trained, in part or whole, on other software (torch 2.0.1; here torch {torch.__version__})" in (
        again.stdout
    ), again.stdout[-3000:]
    (result,) = [json.loads(f.read_text()) for f in (tmp_path / "sweeps" / "t" / "runs").glob("*/*-main/result.json")]
    assert [r["torch"] for r in result["software"]] == ["2.0.1", torch.__version__], result["software"]


@pytest.mark.slow
def test_a_trial_whose_evaluation_raises_is_failed_and_left_out_once_its_settings_change(tmp_path, dataset):  # noqa: F811
    """An exception in evaluation (here a sampler the model cannot run) used to escape run_trial after training:
    the trial listed as missing with no reason, its run left RUNNING."""
    path = _write_cfg(tmp_path, dataset, models=[{"depth": 1}])
    cfg = yaml.safe_load(path.read_text())
    cfg["budgets"] = _budgets(path, (2, 4))  # a WSD main run and one branch
    cfg["base"]["eval"]["sampler"] = "ddpm-learned"  # needs a learned variance this model does not have
    path.write_text(yaml.safe_dump(cfg))
    record, client = _one_failed_trial(path, tmp_path)
    assert record["status"] == "failed" and "-main: evaluation: " in " ".join(record["reasons"]), record
    assert record["train_flops"] > 0  # the training it did is counted (goodput)
    trial = client.get_run(record["mlflow_run_id"])
    assert trial.info.status == "FAILED" and "evaluation" in trial.data.tags["ditscale.failure_reason"]
    assert trial.data.tags["env.torch"] == torch.__version__  # where its main run trained (the trial's own run)
    assert not [r for r in client.search_runs([trial.info.experiment_id]) if r.info.status == "RUNNING"]
    runs = tmp_path / "sweeps" / "t" / "runs"
    # Every run records the training code that trained it; say the main run was trained by an older code.
    from pipelines.infra.code import training_code_fingerprint

    code = training_code_fingerprint()
    results = sorted(runs.glob("*/*/result.json"))
    assert [json.loads(f.read_text())["code"] for f in results] == [code, code]
    assert [json.loads(f.read_text())["codes"] for f in results] == [[code], [code]]  # the branch: its main run's
    (main_result,) = [f for f in results if f.parent.name.endswith("-main")]
    # ... and on an older torch (its record's `software`: every Python / torch / numpy that trained it).
    recorded = json.loads(main_result.read_text())
    assert recorded["env"]["torch"] == torch.__version__
    assert recorded["software"] == [{k: recorded["env"][k] for k in ("python", "torch", "numpy")}]
    software = [{**recorded["software"][0], "torch": "2.0.1"}]
    old = {"code": "0123456789abcdef", "codes": ["0123456789abcdef"], "software": software}
    main_result.write_text(json.dumps({**recorded, **old}))
    trained = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in runs.glob("*/*/*.json")}
    trained.update({f: (f.stat().st_mtime_ns, b"") for f in runs.glob("*/*/checkpoints/step_*/model.safetensors")})
    assert len(list(runs.glob("*/*/result.json"))) == 2

    # Fixed evaluation settings make a new trial (its id hashes them); the old trial's points stay out of the fits.
    # Its runs are the ones already trained (training ids leave evaluation out): evaluated, not trained again.
    # (In-process evaluation, as the quickstart's: its VAE preload thread and the evaluation used to import diffusers
    # at once when there was nothing to train, and the main run's evaluation failed with "cannot import name".)
    second = _sweep(path, "base.eval.sampler=euler", "base.eval.num_actors=0")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 to run (1 of them only to evaluate runs trained before)" in second.stdout
    # The run trained by other code is reused as it is (runs are matched by settings), and the sweep says so.
    other = "1 finished training run(s) it reuses: trained, in part or whole, by other training code"
    other += f" (fingerprint 0123456789abcdef; this code {code})"
    assert other in second.stdout, second.stdout[-3000:]
    said = "1 finished training run(s) it reuses: trained, in part or whole, on other software (torch 2.0.1; here "
    assert f"{said}torch {torch.__version__}), e.g. " in second.stdout, second.stdout[-3000:]
    from jobs.scaling.points import read_points

    _, points = read_points(client, experiment="sweep-test")
    assert points and {p.trial_id for p in points} != {record["trial_id"]}
    assert len(points) == 2 and all(p.fid is not None for p in points)
    for f, (mtime, data) in trained.items():  # no run trained again, no checkpoint rewritten
        assert f.stat().st_mtime_ns == mtime and (not data or f.read_bytes() == data), f
    (done,) = (tmp_path / "sweeps" / "t" / "trials").glob("*/done.json")
    new = json.loads(done.read_text())
    assert new["train_flops"] == 0 and len(new["trained_before"]) == 2  # this invocation trained nothing
    assert new["timing"]["step_s"] == 0 and new["timing"]["eval_s"] > 0
    parent = client.get_run(client.get_run(new["mlflow_run_id"]).data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["goodput"] == 0
    # Its params keep the first invocation's grid (MLflow params are immutable); the grid.* tags are this one's.
    tags = parent.data.tags
    assert json.loads(tags["grid.eval"])["sampler"] == "euler" and tags["grid.num_trials"] == "1"
    assert tags["code.fingerprint"] == code
    assert parent.data.params["num_trials"] == "1" and "grid.eval" not in parent.data.params
    # The branch is recorded in an MLflow run of the new trial; the run that holds its training is left as it was.
    (branch,) = [d for d in runs.glob("*/*-b0")]
    new_marker = json.loads((branch / f"mlflow_run-{new['trial_id']}.json").read_text())
    old_marker = json.loads((branch / "mlflow_run.json").read_text())
    assert json.loads((branch / "trial.json").read_text()) == {"trial_id": record["trial_id"]}
    evaluated, trained_run = client.get_run(new_marker["run_id"]), client.get_run(old_marker["run_id"])
    assert evaluated.data.tags["mlflow.parentRunId"] == new["mlflow_run_id"] != record["mlflow_run_id"]
    assert evaluated.data.tags["ditscale.trial_id"] == new["trial_id"] and "fid" in evaluated.data.metrics
    assert trained_run.data.tags["ditscale.trial_id"] == record["trial_id"] and "fid" not in trained_run.data.metrics
    # The same sweep pointed at another experiment (or store) would start an empty parent run there, and the
    # finished trials (skipped by their done.json) would never be recorded in it: refused, naming where it is.
    moved = _sweep(path, "base.eval.sampler=euler", "mlflow.experiment=elsewhere")
    assert moved.returncode == 2, moved.stdout[-3000:] + moved.stderr[-3000:]
    assert "is recorded in MLflow experiment 'sweep-test'" in moved.stderr


@pytest.mark.slow
def test_a_trial_whose_training_and_then_evaluation_raise_is_failed_with_the_training_reason(tmp_path, dataset):  # noqa: F811
    """The main run fails once after step 2 and finishes after Ray Train restarts it; its WSD branch, which starts
    from that step, fails there too, past run.max_failures, so training raises with the main run finished.
    Evaluating that run (the points a failed trial keeps) raises as well: the trial is still FAILED with the
    training's reason, every run ended, instead of the second exception escaping the trial."""
    path = _write_cfg(tmp_path, dataset, models=[{"depth": 1}])
    cfg = yaml.safe_load(path.read_text())
    cfg["budgets"] = _budgets(path, (4, 8))  # the 4-step branch starts from the main run's step 2 (decay 0.5)
    cfg["base"]["debug"] = {"inject_failure": {"step": 2, "mode": "raise"}}  # before step 3, once in each run
    cfg["base"]["run"]["max_failures"] = 1
    cfg["base"]["eval"]["sampler"] = "ddpm-learned"  # needs a learned variance this model does not have
    path.write_text(yaml.safe_dump(cfg))
    record, client = _one_failed_trial(path, tmp_path)
    (main_result,) = (tmp_path / "sweeps" / "t" / "runs").glob("*/*-main/result.json")
    assert json.loads(main_result.read_text())["status"] == "finished"  # trained: only its evaluation raised
    assert len(record["reasons"]) == 2, record
    assert all("injected failure at step 2" in r for r in record["reasons"]), record["reasons"]
    trial = client.get_run(record["mlflow_run_id"])
    assert trial.info.status == "FAILED" and "injected failure" in trial.data.tags["ditscale.failure_reason"]
    assert not [r for r in client.search_runs([trial.info.experiment_id]) if r.info.status == "RUNNING"]


@pytest.mark.slow  # each sweep subprocess starts a local Ray before it refuses the trial
def test_a_trial_larger_than_the_local_cluster_is_refused_not_left_waiting(tmp_path, dataset):  # noqa: F811
    path = _write_cfg(tmp_path, dataset, models=[{"depth": 1}], num_cpus=2)
    result = _sweep(path, "trial_cpus=3")  # Tune used to wait for a 3-CPU slot on the 2-CPU instance forever
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "needs 4 CPUs (trial_cpus 3 + run.num_workers 1 x run.cpus_per_worker 1)" in result.stderr
    assert "the Ray cluster has 2" in result.stderr
    # Not only the first trial: a later one with more workers (its own `set`) waited forever the same way.
    big = {"preset": "MMDiT-T", "set": {"run.num_workers": 2}}
    path = _write_cfg(tmp_path, dataset, models=[{"depth": 1}, big], num_cpus=2, trial_cpus=0.05)
    result = _sweep(path)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "needs 2.05 CPUs (trial_cpus 0.05 + run.num_workers 2 x run.cpus_per_worker 1)" in result.stderr
    # Trial drivers that hold every CPU a worker group needs: 3 x 0.5 + 1 > 2 CPUs.
    path = _write_cfg(tmp_path, dataset, models=[{"depth": 1}], num_cpus=2, trial_cpus=0.5, max_concurrent=3)
    result = _sweep(path)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "max_concurrent 3 trial drivers x trial_cpus 0.5 leave less than the 1 CPUs" in result.stderr


def test_max_concurrent_0_runs_as_many_trials_as_fit_with_their_drivers_and_gpus():
    from jobs.sweep.driver import _fitting_trials

    assert _fitting_trials((2, 0), 0.05, 0.95, 0) == 2  # the quickstart's layout: one trial per core
    assert _fitting_trials((4, 0), 1, 1, 0) == 2  # the drivers' CPUs count: 4 trials would hold all 4 CPUs
    assert _fitting_trials((1, 0), 0.1, 4, 0) == 1
    assert _fitting_trials((96, 8), 0.1, 8, 4) == 2  # GPU trials: as many as the GPUs take, not the CPUs


def test_a_rerun_trial_that_leaves_no_record_is_missing_not_its_old_failure(tmp_path, dataset, monkeypatch):  # noqa: F811
    """A trial killed without a record this time used to be reported from the earlier invocation's failed.json: its
    old reasons, its old FLOPs in this goodput, and with allow_failures a complete sweep. The sweep sets the old
    record aside as failed.previous.json before it runs the trial; with no new record the trial reads as missing.
    And an error from Ray / Tune (injected where Tune would raise it) ends the parent FAILED."""
    from mlflow import MlflowClient

    from jobs.sweep import driver
    from jobs.sweep.config import SweepConfig
    from pipelines.infra.config_files import load_config

    path = _write_cfg(tmp_path, dataset, models=[{"depth": 1}], allow_failures=True)
    cfg = load_config(SweepConfig, str(path), [])
    (tp,) = driver.plan_trials(driver.expand_grid(cfg), cfg.mode)
    tdir = tmp_path / "sweeps" / "t" / "trials" / tp.trial.trial_id
    tdir.mkdir(parents=True)
    old = {
        "trial_id": tp.trial.trial_id,
        "name": tp.trial.name,
        "status": "failed",
        "reasons": ["old"],
        "points": [],
        "train_flops": 1e12,
        "timing": {"step_s": 5.0},
    }
    (tdir / "failed.json").write_text(json.dumps(old))
    sdir = driver.sweep_dir(cfg)
    assert driver._records(sdir, [tp])[0]["reasons"] == ["old"]  # before: the old failure is the trial's record
    driver._set_aside_failures(sdir, [tp])  # what run_sweep does before it runs the pending trials
    (record,) = driver._records(sdir, [tp])  # the trial died leaving no record this time
    assert record["status"] == "missing" and "train_flops" not in record and "reasons" not in record, record
    assert json.loads((tdir / "failed.previous.json").read_text())["reasons"] == ["old"]
    assert not (tdir / "failed.json").exists()

    def broken(*a, **k):
        raise RuntimeError("could not reach the cluster")

    (tdir / "failed.previous.json").unlink()
    (tdir / "failed.json").write_text(json.dumps(old))
    monkeypatch.setattr(driver, "_run_tune", broken)
    with pytest.raises(RuntimeError, match="could not reach"):
        driver.run_sweep(load_config(SweepConfig, str(path), []))
    assert not (tdir / "failed.json").exists() and (tdir / "failed.previous.json").exists()  # set aside first
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status) for r in runs]
