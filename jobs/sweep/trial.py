"""One sweep trial: train its runs in one Ray Train run, evaluate its budget points, record them in MLflow.

A trial is an MLflow child run of the sweep's parent (tags ditscale.role=trial, ditscale.trial_id) holding
`points.json`; its training runs are grandchildren. It ends with <sweep>/trials/<id>/done.json when every run
finished, or failed.json (and a FAILED MLflow run) when one did not: the next invocation of the sweep reruns it.

Training runs are stored under the trial's training id (jobs.sweep.grid.EVAL_ONLY), so a trial that differs from an
earlier one only in evaluation settings finds its runs trained: it evaluates them, records them in MLflow runs of
its own (`mlflow_run-<trial id>.json`; the training curves stay in the runs of the trial that trained them, named in
the run directory's `trial.json`), and counts none of their training in its FLOPs or time.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any, Optional

from jobs.scaling.points import ScalingPoint
from jobs.sweep.grid import Trial, TrialPlan, trial_storage
from pipelines.infra import storage

DONE, FAILED = "done.json", "failed.json"
TRIAL_OF_RUN = "trial.json"  # in a training run's directory: {"trial_id"} of the trial that trained it


def trial_dir(sweep_dir: str, trial_id: str) -> str:
    """<sweep>/trials/<trial id>."""
    return storage.join(sweep_dir, "trials", trial_id)


def _child_run(tp: TrialPlan, tdir: str, parent_run_id: Optional[str]) -> Optional[str]:
    """The trial's MLflow child run (re-attached after a driver restart, never duplicated)."""
    from pipelines.infra import tracking

    main = tp.runs[0].plan
    if main.tracking_uri is None:
        return None
    client = tracking.client(main.tracking_uri, check=False)
    t = tp.trial
    tags = {tracking.ROLE_TAG: tracking.ROLE_TRIAL, tracking.TRIAL_ID_TAG: t.trial_id}
    run_id, _ = tracking.attach_run(
        client,
        storage.join(tdir, "child_run.json"),
        experiment=main.cfg.mlflow.experiment,
        name=t.name,
        tags=tags,
        parent_run_id=parent_run_id,
    )
    o = main.cfg.optim
    tracking.log_params_once(
        client,
        run_id,
        {
            "model": t.name,
            "params": main.params,
            "train_flops_per_image": main.train_flops_per_image,
            "budgets": json.dumps(t.budgets),
            "lr": o.lr,
            "batch_size": main.cfg.data.batch_size,
            "data_manifest": main.cfg.data.manifest,
            "schedule": o.schedule,
            "hparams": json.dumps(t.hparams),
            "trial_id": t.trial_id,
            "arm": t.arm or "",
            "model_config": json.dumps(main.model_config),
        },
    )
    # Params keep the first invocation's values: a trial rerun under a grid with another axis at its base value (same
    # id) has this grid's hyper-parameters and name here (what `failed_trials` reads of a trial with no points).
    tracking.set_tags(client, run_id, {tracking.HPARAMS_TAG: json.dumps(t.hparams), tracking.RUN_NAME_TAG: t.name})
    return run_id


def _preload_evaluation(tp: TrialPlan) -> Optional[threading.Thread]:
    """In-process evaluation (eval.num_actors 0): load the VAE and feature net while the workers train. The thread
    must be joined before evaluating: two threads importing diffusers at once can fail ("cannot import name
    'AutoencoderKL'"), as they did for trials with nothing to train."""
    ev = tp.runs[0].plan.cfg.eval
    if ev.num_samples <= 0 or ev.num_actors != 0:
        return None
    from jobs.evaluation.fid import preload

    def load() -> None:
        try:
            preload(tp.runs[0].plan.cfg.data.manifest)
        except Exception:  # noqa: BLE001 - evaluation loads them again and reports the error with context
            pass

    thread = threading.Thread(target=load, name="eval-preload", daemon=True)
    thread.start()
    return thread


def _join(thread: Optional[threading.Thread]) -> None:
    if thread is not None:
        thread.join()


def trial_timing(
    summaries: list[dict], *, train_wall: float, eval_wall: float, trained_before: frozenset[str] = frozenset()
) -> dict[str, float]:
    """Where a trial's time went (s): start-up (Ray Train worker group, data set; the training wall not spent in a
    run's loop), setup (models, restores), data, step, checkpoint (+ validation, logging) and evaluation; plus
    the CPU-seconds evaluation spent on idle CPUs beyond the trial's own (`eval_extra_cpu_s`, eval.spare_cpus).
    The loops of the runs in `trained_before` (trained by an earlier invocation) are not this trial's time."""
    keys = ("setup_s", "data_s", "step_s", "checkpoint_s")
    trained_now = [s for s in summaries if s.get("run_name") not in trained_before]
    loops = {k: float(sum((s.get("timing") or {}).get(k, 0.0) for s in trained_now)) for k in keys}
    startup = max(0.0, train_wall - sum(loops.values()))
    extra = float(sum(s.get("eval_extra_cpu_s") or 0.0 for s in summaries))
    return {
        "startup_s": startup,
        **loops,
        "eval_s": eval_wall,
        "wall_s": train_wall + eval_wall,
        "eval_extra_cpu_s": extra,
    }


def _cpus(tp: TrialPlan) -> float:
    """CPUs a trial keeps busy: its workers' torch threads (or their Ray CPU share)."""
    run = tp.runs[0].plan.cfg.run
    return float(run.num_workers * (run.num_threads or run.cpus_per_worker))


def _gpus(tp: TrialPlan) -> int:
    """GPUs a trial's workers hold (one each with run.use_gpu, else none)."""
    run = tp.runs[0].plan.cfg.run
    return int(run.num_workers) if run.use_gpu else 0


def _points(tp: TrialPlan, summaries: list[dict]) -> list[ScalingPoint]:
    """The trial's points: every point of each run (separate), or each run's own budget (wsd)."""
    points = []
    for spec, out in zip(tp.runs, summaries):
        for raw in out.get("points", []):
            p = ScalingPoint.from_dict(raw)
            # wsd: the main run's points at smaller budgets are undecayed; the branch of each budget replaces them.
            if tp.mode == "separate" or abs(p.budget_flops - spec.budget) <= 1e-6 * spec.budget:
                points.append(
                    dataclasses.replace(
                        p, mode=tp.mode, trial_id=tp.trial.trial_id, arm=tp.trial.arm, hparams=dict(tp.trial.hparams)
                    )
                )
    return sorted(points, key=lambda p: p.budget_flops)


def restamped(trial: Trial, tdir: str, record: dict, tracking_uri: Optional[str]) -> dict:
    """A finished trial's record as this sweep names it. The trial id covers what was trained and measured, not
    how the grid that first ran it named it: a sweep that adds an axis at the base value reuses the base's finished
    trial, whose points carried that grid's hyper-parameters (none), so `mup-report` found no `optim.lr` and a new
    `optim.mup` axis classed the reused point as standard. The record, its points and the trial's MLflow
    points.json (with tags `ditscale.hparams` and its name) are stamped with this sweep's; nothing else changes."""
    want = dict(trial.hparams)
    same = json.dumps(want, sort_keys=True, default=str)
    if (
        record.get("name") == trial.name
        and record.get("arm") == trial.arm
        and all(json.dumps(p.get("hparams") or {}, sort_keys=True, default=str) == same for p in record["points"])
    ):
        return record
    points = [dataclasses.replace(ScalingPoint.from_dict(p), arm=trial.arm, hparams=want) for p in record["points"]]
    record = {**record, "name": trial.name, "arm": trial.arm, "points": [p.to_dict() for p in points]}
    child = record.get("mlflow_run_id")
    if child and tracking_uri:
        from pipelines.infra import tracking

        client = tracking.client(tracking_uri, check=False)
        try:
            tracking.retry(lambda: _stamp_child(client, child, record["points"], same, trial.name), what="restamp")
        except Exception as exc:  # noqa: BLE001 - a deleted child run or a store that errors must not stop the sweep
            import sys

            print(
                f"[ditscale] warning: trial {trial.trial_id}: its MLflow run {child} keeps the hyper-parameters of the "
                f"grid that ran it ({exc}); done.json too, so the next invocation tries again",
                file=sys.stderr,
            )
            return record
    storage.write_json(storage.join(tdir, DONE), record)
    return record


def _stamp_child(client: Any, child: str, points: list[dict], hparams: str, name: str) -> None:
    from pipelines.infra import tracking

    client.log_text(child, json.dumps(points, indent=2), tracking.POINTS_ARTIFACT)
    tracking.set_tags(client, child, {tracking.HPARAMS_TAG: hparams, tracking.RUN_NAME_TAG: name})


def _record(tp: TrialPlan, child: Optional[str], points: list[ScalingPoint], status: str, reasons: list[str]) -> None:
    """points.json, the branch points' metrics and the status on the trial's MLflow run."""
    if child is None:
        return
    from pipelines.infra import tracking

    client = tracking.client(tp.runs[0].plan.tracking_uri, check=False)
    main_run = tp.runs[0].plan.run_name
    for p in points:
        if p.run != main_run:  # the main run logged its own points into the child already
            tracking.log_metrics(client, child, {"fid": p.fid, "val_loss_at_budget": p.val_loss}, p.step)
    client.log_text(child, json.dumps([p.to_dict() for p in points], indent=2), tracking.POINTS_ARTIFACT)
    tracking.end_run(client, child, status, "; ".join(reasons) or None)


def _prepare_runs(tp: TrialPlan, child: Optional[str], prepared: list) -> None:
    """Prepare the trial's runs into `prepared` (so a failure part-way leaves the ones made, to be FAILED) under its
    child run (the main run records into it); failed results cleared, so a rerun of a failed trial retrains its
    failed runs from their last good checkpoint."""
    from jobs.train.driver import clear_failed, prepare_run

    tid = tp.trial.trial_id
    tags = {"ditscale.trial_id": tid}
    for i, spec in enumerate(tp.runs):
        plan = spec.plan
        owner_uri = storage.join(plan.run_dir, TRIAL_OF_RUN)
        owner = storage.read_json(owner_uri).get("trial_id") if storage.exists(owner_uri) else None
        if owner is None:
            storage.write_json(owner_uri, {"trial_id": tid})
        if i == 0:
            plan.mlflow_run_id = child
        elif owner not in (None, tid):  # trained by a trial with other evaluation settings
            plan.mlflow_marker = f"mlflow_run-{tid}.json"
        role = {**tags, "ditscale.budget_role": spec.role}
        prepared.append(prepare_run(spec.plan, parent_run_id=child, tags=role))
    clear_failed(prepared)


def _failed_summaries(tp: TrialPlan, prepared: list, reason: str) -> list[dict]:
    """Summaries of a trial whose set-up or training raised: its finished runs evaluated, the others FAILED."""
    import traceback

    from jobs.train.driver import abandon_runs, fail_run

    try:  # (abandon_runs evaluates the runs that did finish, which may raise too)
        summaries = abandon_runs(prepared, reason)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        summaries = [fail_run(r, reason) for r in prepared]
    summaries = summaries or [{"run_name": tp.runs[0].plan.run_name, "status": "failed"}]
    for s in summaries:
        s.setdefault("reason", reason)
    return summaries


def _finished_summaries(prepared: list) -> list[dict]:
    """Summaries of trained runs, each evaluated; a run whose evaluation raises is FAILED (a rerun evaluates it)."""
    import traceback

    from jobs.train.driver import fail_run, failure_reason, finish_run

    summaries = []
    for r in prepared:
        try:
            summaries.append(finish_run(r))
        except Exception as exc:  # noqa: BLE001 - trained, but its evaluation failed
            traceback.print_exc()
            summaries.append(fail_run(r, f"evaluation: {failure_reason(exc)}"))
    return summaries


def run_trial(
    tp: TrialPlan, sweep_dir: str, parent_run_id: Optional[str], callbacks: Optional[list] = None
) -> dict[str, Any]:
    """Train + evaluate one trial at every budget (idempotent via done.json); its record."""
    import traceback

    from jobs.train.driver import failure_reason, train_runs, trained

    tdir = trial_dir(sweep_dir, tp.trial.trial_id)
    if storage.exists(storage.join(tdir, DONE)):
        return storage.read_json(storage.join(tdir, DONE))
    t0 = time.time()
    child: Optional[str] = None
    prepared: list = []
    t_train = t0
    trained_before: frozenset[str] = frozenset()
    preloading: Optional[threading.Thread] = None
    # Whatever raises, from setting the runs up to evaluating them, ends as a FAILED trial with its reason
    # (failed.json, MLflow), never as a trial missing from the sweep with its run left RUNNING.
    try:
        child = _child_run(tp, tdir, parent_run_id)
        _prepare_runs(tp, child, prepared)
        trained_before = frozenset(r.plan.run_name for r in prepared if trained(r.plan.run_dir))
        preloading = _preload_evaluation(tp)
        t_train = time.time()
        train_runs(prepared, trial_storage(tp.trial), callbacks=callbacks)
    except Exception as exc:  # noqa: BLE001 - the trial is FAILED (failed.json, MLflow) with the reason; others go on
        traceback.print_exc()
        t_eval = time.time()
        _join(preloading)
        summaries = _failed_summaries(tp, prepared, failure_reason(exc))
    else:
        t_eval = time.time()
        _join(preloading)
        summaries = _finished_summaries(prepared)
    # Runs trained by an earlier invocation (another trial's, or this one's before a restart) cost this one nothing.
    timing = trial_timing(
        summaries, train_wall=t_eval - t_train, eval_wall=time.time() - t_eval, trained_before=trained_before
    )
    reasons = [f"{s.get('run_name')}: {s.get('reason')}" for s in summaries if s["status"] != "finished"]
    status = "failed" if reasons else "finished"
    points = _points(tp, summaries)
    _record(tp, child, points, status, reasons)
    record = {
        "trial_id": tp.trial.trial_id,
        "name": tp.trial.name,
        "arm": tp.trial.arm,
        "status": status,
        "reasons": reasons,
        "points": [p.to_dict() for p in points],
        "mlflow_run_id": child,
        "wall_s": time.time() - t0,
        "train_flops": float(
            sum(s.get("flops_run") or 0.0 for s in summaries if s.get("run_name") not in trained_before)
        ),
        "trained_before": sorted(trained_before),
        "peak_flops": next((s["peak_flops"] for s in summaries if s.get("peak_flops")), None),
        "cpus": _cpus(tp),
        "gpus": _gpus(tp),
        "timing": timing,
    }
    storage.write_json(storage.join(tdir, DONE if status == "finished" else FAILED), record)
    if status == "finished" and storage.exists(storage.join(tdir, FAILED)):
        storage.delete(storage.join(tdir, FAILED))
    return record
