"""What a rerun finds in the MLflow record (sqlite store): a run deleted in the UI, a parent replaced, a run of
another experiment, an earlier attempt's failure reason, a registered-model name the registry's filters cannot
hold, and a sweep stopped before its trials ran."""

from __future__ import annotations

import json

import pytest

from pipelines.infra import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return tracking.client(uri, check=False), uri


def test_a_run_deleted_in_the_ui_gives_a_new_run_and_its_experiment_comes_back(store, tmp_path, capsys):
    # update_run on a deleted run raised INVALID_PARAMETER_VALUE, retried, then a traceback at every rerun.
    client, _ = store
    marker = str(tmp_path / "run" / "mlflow_run.json")
    first, created = tracking.attach_run(client, marker, experiment="e", name="r")
    assert created
    client.delete_run(first)
    second, created = tracking.attach_run(client, marker, experiment="e", name="r")
    assert (
        created
        and second != first
        and json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"] == second
    )
    assert f"MLflow run {first}" in capsys.readouterr().err
    client.delete_experiment(client.get_run(second).info.experiment_id)  # deletes its runs too
    third, created = tracking.attach_run(client, marker, experiment="e", name="r")
    assert created and client.get_run(third).info.lifecycle_stage == "active"


def test_a_reattached_run_moves_under_the_parent_it_is_given(store, tmp_path):
    # A trial run re-attached after its sweep's parent was replaced kept the old parent's tag: the new parent
    # had no children, so fit / report / promote saw no points.
    client, _ = store
    old_parent, _ = tracking.attach_run(client, str(tmp_path / "p1.json"), experiment="e", name="sweep")
    child, _ = tracking.attach_run(client, str(tmp_path / "c.json"), experiment="e", name="t", parent_run_id=old_parent)
    new_parent, _ = tracking.attach_run(client, str(tmp_path / "p2.json"), experiment="e", name="sweep")
    again, created = tracking.attach_run(
        client, str(tmp_path / "c.json"), experiment="e", name="t", parent_run_id=new_parent
    )
    assert (again, created) == (child, False)
    assert [r.info.run_id for r in tracking.child_runs(client, new_parent)] == [child]


def test_a_run_recorded_in_another_experiment_is_named_not_reused_silently(store, tmp_path):
    client, _ = store
    marker = str(tmp_path / "mlflow_run.json")
    run, _ = tracking.attach_run(client, marker, experiment="old-exp", name="r")
    with pytest.raises(
        tracking.ExperimentRecordError,
        match=rf"records MLflow run {run} in experiment 'old-exp', "
        r"not 'new-exp': rerun with mlflow.experiment=old-exp",
    ):
        tracking.attach_run(client, marker, experiment="new-exp", name="r")
    assert tracking.attach_run(client, marker, experiment="old-exp", name="r") == (run, False)


def test_a_run_finished_after_a_failure_drops_the_old_reason(store, tmp_path):
    client, _ = store
    run, _ = tracking.attach_run(client, str(tmp_path / "m.json"), experiment="e", name="r")
    tracking.end_run(client, run, "failed", "non-finite loss at step 7")
    assert client.get_run(run).data.tags[tracking.FAILURE_REASON_TAG] == "non-finite loss at step 7"
    tracking.end_run(client, run, "finished")
    tags = client.get_run(run).data.tags
    assert tags[tracking.STATUS_TAG] == "finished" and tracking.FAILURE_REASON_TAG not in tags
    tracking.end_run(client, run, "finished")  # nothing to drop: no error


@pytest.mark.parametrize("name", ["bob's-dit", 'a"b', "a\\b"])
def test_registered_model_names_the_registry_filters_cannot_hold_are_refused(name):
    # "bob's-dit" registered the model, then broke the version search (a traceback; with pyfunc a duplicate
    # version at every promote).
    with pytest.raises(ValueError, match="quotes"):
        tracking.check_registry_names(name)


def test_a_sweep_stopped_before_its_trials_run_does_not_leave_its_run_running(store, tmp_path, monkeypatch):
    import jobs.sweep.driver as driver
    from jobs.sweep.config import SweepConfig, SweepMlflow

    _, uri = store
    cfg = SweepConfig(name="s", output=str(tmp_path / "sweeps"), mlflow=SweepMlflow(tracking_uri=uri, experiment="e"))
    monkeypatch.setattr(driver, "expand_grid", lambda cfg: [])
    monkeypatch.setattr(driver, "plan_trials", lambda trials, mode: [])

    def interrupted(plans):
        raise KeyboardInterrupt("Ctrl-C while the trials' records are read")

    monkeypatch.setattr(driver, "_reused_runs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        driver.run_sweep(cfg)
    run = tracking.find_parent_run(tracking.client(uri), "e")
    assert run.info.status == "FAILED" and run.data.tags[tracking.STATUS_TAG] == "failed"
    assert "KeyboardInterrupt: Ctrl-C while" in run.data.tags[tracking.FAILURE_REASON_TAG]


def test_a_sweep_whose_run_was_deleted_puts_its_finished_trials_under_the_new_one(store, tmp_path):
    """The rerun made a new parent run, but finished trials are never re-attached: their runs stayed under the
    deleted parent and fit / report / promote read none of their points from the new one."""
    import yaml

    from jobs.sweep import driver
    from jobs.sweep.trial import DONE, _child_run, trial_dir
    from pipelines.infra import storage
    from tests.jobs._train_helpers import TEXT_BUILTIN, make_eval_dataset

    client, uri = store
    data = make_eval_dataset(tmp_path / "data", n=16, **TEXT_BUILTIN)[0]
    path = tmp_path / "sweep.yaml"
    base = {"model": {"preset": "MMDiT-T"}, "data": {"manifest": data, "batch_size": 8, "val_samples": 4}}
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "output": str(tmp_path / "sweeps"),
                "base": {**base, "eval": {"num_samples": 8, "sampler": "euler", "steps": 2}},
                "models": [{"depth": 1}, "MMDiT-T"],
                "budgets": [1.0e15],
                "mlflow": {"tracking_uri": uri, "experiment": "e"},
            }
        )
    )
    cfg = driver.load_sweep_config(str(path), [])
    plans = driver.plan_trials(driver.expand_grid(cfg), cfg.mode)
    sdir = driver.sweep_dir(cfg)
    storage.makedirs(sdir)
    first = driver._parent_run(cfg, sdir, uri, len(plans))
    for tp in plans:  # as a finished sweep leaves them: a child run with points, done.json
        tdir = trial_dir(sdir, tp.trial.trial_id)
        child = _child_run(tp, tdir, first)
        point = {"model": tp.trial.name, "params": 1000, "budget_flops": 1e15, "flops": 1e15, "step": 4, "fid": 10.0}
        point.update(trial_id=tp.trial.trial_id, hparams=dict(tp.trial.hparams), arm=tp.trial.arm)
        client.log_text(child, json.dumps([point]), tracking.POINTS_ARTIFACT)
        tracking.end_run(client, child, "finished")
        record = {"trial_id": tp.trial.trial_id, "name": tp.trial.name, "arm": tp.trial.arm, "status": "finished"}
        storage.write_json(
            storage.join(tdir, DONE), {**record, "reasons": [], "points": [point], "mlflow_run_id": child}
        )
    client.delete_run(first)  # the MLflow UI's "delete run"
    out = driver.run_sweep(driver.load_sweep_config(str(path), []))
    assert out["parent_run_id"] != first and out["complete"]
    assert len(tracking.child_runs(client, out["parent_run_id"])) == 2
    assert len(tracking.sweep_points(client, experiment="e")[1]) == 2
