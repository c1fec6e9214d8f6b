"""The sweep driver: validate the grid, run the missing trials on Ray Tune, record the sweep in MLflow.

Tune runs a FUNCTION trainable (Ray Train V2 cannot be passed to Tuner directly) that launches one Ray Train run per
trial (jobs.sweep.trial): its worker group trains the trial's runs one after the other, and the trial's reports
reach Tune through TuneReportCallback. The validated trial plans reach the trials through `tune.with_parameters`
(the object store), not as configs to parse again.

Restart: a finished trial has <sweep>/trials/<id>/done.json and is skipped; an interrupted one skips its runs that
wrote result.json and resumes the others from their latest checkpoints; a failed one is rerun. Running the same
command again therefore finishes only what is missing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional, Sequence

from ditcore.config import ConfigError, to_dict
from jobs.sweep.config import SweepConfig
from jobs.sweep.grid import TrialPlan, expand_grid, plan_trials, sweep_base, sweep_dir
from jobs.sweep.trial import DONE, FAILED, restamped, run_trial, trial_dir
from pipelines.infra import storage
from pipelines.infra.code import (
    env_tags,
    environment,
    merged_versions,
    software_besides,
    software_words,
    training_code_fingerprint,
)


def load_sweep_config(path: Optional[str], overrides: Sequence[str] = ()) -> SweepConfig:
    """YAML + k=v overrides -> SweepConfig (errors name the key). `hparams` keys are dotted TrainConfig keys, so an
    override `hparams.optim.lr=[...]` (which nests as {optim: {lr: [...]}}) means hparams {"optim.lr": [...]}."""
    from ditcore.config import from_dict
    from pipelines.infra.config_files import compose

    raw = compose(path, None, overrides)
    if isinstance(raw.get("hparams"), dict):
        raw["hparams"] = _dotted(raw["hparams"])
    return from_dict(SweepConfig, raw)


def _dotted(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": [..]}, "data.batch_size": [..]} -> {"optim.lr": [..], "data.batch_size": [..]}."""
    out: dict = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_dotted(v, key + "."))
        else:
            out[key] = v
    return out


def _grid(cfg: SweepConfig, n_trials: int) -> dict[str, Any]:
    """What an invocation runs, as the parent run's params (first invocation) and grid.* tags (every one) show it."""
    return {
        "mode": cfg.mode,
        "budgets": json.dumps(sorted(cfg.budgets)),
        "models": json.dumps(cfg.models),
        "arms": json.dumps(cfg.arms),
        "hparams": json.dumps(cfg.hparams),
        "num_trials": n_trials,
        "eval": json.dumps(sweep_base(cfg).get("eval") or {}),
    }


def _parent_run(cfg: SweepConfig, sdir: str, tracking_uri: str, n_trials: int) -> str:
    """The sweep's MLflow parent run (re-attached after a restart)."""
    from pipelines.infra import tracking

    client = tracking.client(tracking_uri, check=False)
    marker = storage.join(sdir, "sweep.json")
    if storage.exists(marker):  # its finished trials are recorded there: a new parent elsewhere would have none
        rec = storage.read_json(marker)
        was = (rec.get("tracking_uri", tracking_uri), rec.get("experiment", cfg.mlflow.experiment))
        if was != (tracking_uri, cfg.mlflow.experiment):
            raise ConfigError(
                f"sweep {cfg.name!r} ({sdir}) is recorded in MLflow experiment {was[1]!r} at {was[0]!r} (parent run "
                f"{rec.get('run_id')}), not {cfg.mlflow.experiment!r} at {tracking_uri!r}: rerun it with "
                f"mlflow.tracking_uri={was[0]} mlflow.experiment={was[1]}, or give the new sweep another name"
            )
    rid, created = tracking.attach_run(
        client,
        marker,
        experiment=cfg.mlflow.experiment,
        name=cfg.name,
        tags={tracking.ROLE_TAG: tracking.ROLE_SWEEP},
    )
    grid = _grid(cfg, n_trials)
    # MLflow params cannot change: they keep the first invocation's grid. The `grid.*` tags hold this invocation's
    # (with its evaluation settings), as `config/grid.json` holds its trial ids and grid; `code.fingerprint` the
    # training code this invocation ran and `env.*` the driver's software and machine (pipelines/infra/code.py; each
    # training run is tagged with its worker's).
    tracking.log_params_once(client, rid, {k: v for k, v in {**grid, "sweep_dir": sdir}.items() if k != "eval"})
    tracking.set_tags(
        client,
        rid,
        {
            **{f"grid.{k}": v for k, v in grid.items()},
            "code.fingerprint": training_code_fingerprint(),
            **env_tags(environment()),
        },
        too_long=f"(too long for a tag: {tracking.GRID_ARTIFACT})",
    )
    if created:
        client.log_text(rid, json.dumps(to_dict(cfg), indent=2), "config/sweep.json")
    return rid


def _tune_trainable(config: dict, plans: dict, sweep: str, parent: Optional[str]) -> None:
    """Ray Tune function trainable: one trial = run_trial with Ray Train's reports forwarded to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    rec = run_trial(plans[config["trial_id"]], sweep, parent, callbacks=[TuneReportCallback()])
    fids = [p["fid"] for p in rec["points"] if p.get("fid") is not None]
    tune.report(
        {
            "done": 1,
            "status": rec["status"],
            "num_points": len(rec["points"]),
            "best_fid": min(fids) if fids else float("nan"),
        }
    )


def _check_fits(cfg: SweepConfig, pending: list[TrialPlan], started: bool, cpus: float) -> tuple[float, int, float]:
    """(CPUs, GPUs of the largest trial's workers, GPUs the cluster has now). On a local instance (`started`), which
    never grows, a sweep that would wait forever is a ConfigError; on a cluster, a warning."""
    import ray

    runs = [tp.runs[0].plan.cfg.run for tp in pending]
    # The largest trial decides (a model's `set` may give it more workers than the base's).
    big = max(pending, key=lambda tp: _worker_cpus(tp.runs[0].plan.cfg.run))
    big_run = big.runs[0].plan.cfg.run
    per_trial = _worker_cpus(big_run)
    per_trial_gpus = max((r.num_workers for r in runs if r.use_gpu), default=0)
    gpus_now = float(ray.cluster_resources().get("GPU", 0))
    problems = []
    if cfg.trial_cpus + per_trial > cpus:
        problems.append(
            f"trial {big.trial.name} needs {cfg.trial_cpus + per_trial:g} CPUs (trial_cpus {cfg.trial_cpus:g} + "
            f"run.num_workers {big_run.num_workers} x run.cpus_per_worker {big_run.cpus_per_worker:g}) but the Ray "
            f"cluster has {cpus:g}"
        )
    if per_trial_gpus > gpus_now:
        problems.append(
            f"a trial needs {per_trial_gpus} GPUs (run.use_gpu, one per worker) but the Ray cluster has {gpus_now:g}"
        )
    for msg in problems:
        if started:  # a local instance never grows: Tune would wait for resources forever
            raise ConfigError(f"{msg}; lower them or raise num_cpus")
        print(f"[ditscale] warning: {msg}; the trials wait until the cluster grows", file=sys.stderr, flush=True)
    if started and cfg.max_concurrent and cfg.max_concurrent * cfg.trial_cpus + per_trial > cpus:
        # every CPU held by a waiting trial driver, none left for a worker group: Tune would wait forever
        raise ConfigError(
            f"max_concurrent {cfg.max_concurrent} trial drivers x trial_cpus {cfg.trial_cpus:g} leave less than the "
            f"{per_trial:g} CPUs a trial's workers need on a {cpus:g}-CPU Ray instance; lower max_concurrent or "
            f"trial_cpus"
        )
    return per_trial, per_trial_gpus, gpus_now


def _run_tune(cfg: SweepConfig, pending: list[TrialPlan], sdir: str, parent: str) -> dict[str, float]:
    """Run the pending trials on Ray Tune, as many at once as the cluster's CPUs fit; the machine's size + peak."""
    import ray
    from ray import tune

    from jobs.cluster.shared_storage import check_shared_storage
    from jobs.sweep.goodput import measure_machine_peak
    from pipelines.infra.ray_runtime import init_ray

    started = init_ray(num_cpus=cfg.num_cpus)  # a fresh local instance of that size when no cluster address is set
    cpus = float(ray.cluster_resources().get("CPU", 1))
    run = pending[0].runs[0].plan.cfg.run
    per_trial, per_trial_gpus, gpus_now = _check_fits(cfg, pending, started, cpus)
    # GPU accounting by the config, not by the GPUs present now: an autoscaling cluster may have none yet.
    use_gpu = bool(per_trial_gpus)
    peak_before = measure_machine_peak(cpus) if not use_gpu else None  # before any trial loads the machine
    check_shared_storage(
        cfg.output, key="output", override="base.run.shared_filesystem", shared_filesystem=run.shared_filesystem
    )
    max_conc = cfg.max_concurrent or _fitting_trials(
        _cluster_size(started, cpus, gpus_now), cfg.trial_cpus, per_trial, per_trial_gpus
    )
    plans = {tp.trial.trial_id: tp for tp in pending}
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trainable, plans=plans, sweep=sdir, parent=parent), {"cpu": cfg.trial_cpus}
    )
    fs, fs_path = storage.get_fs(storage.join(sdir, "tune"))
    if not storage.is_s3(sdir):
        os.makedirs(fs_path, exist_ok=True)
    name_of = lambda trial: str(trial.config["trial_id"])  # noqa: E731 - Tune trial (dir) name = our trial id
    import logging

    # Tune's status table (verbosity 1) at INFO; silent when the runs log only warnings (the quickstart).
    verbose = 1 if logging.getLevelName(str(run.log_level).upper()) <= logging.INFO else 0
    grid = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search(_longest_first(pending))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_conc, trial_name_creator=name_of, trial_dirname_creator=name_of
        ),
        run_config=tune.RunConfig(
            name=f"tune-{int(time.time())}", storage_path=fs_path, storage_filesystem=fs, verbose=verbose
        ),
    ).fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        print(f"[ditscale] {len(errors)} trial(s) errored; first: {errors[0]}", file=sys.stderr)
    if use_gpu:  # the GPUs' peak comes from the trials' records (jobs.sweep.goodput.gpu_peak)
        # the cluster's GPUs now that the trials ran (an autoscaling cluster may have started with none)
        gpus = max(gpus_now, float(ray.cluster_resources().get("GPU", 0)), float(per_trial_gpus))
        source = f"run.peak_flops {run.peak_flops:.3g} per GPU" if run.peak_flops else "datasheet bf16 peak"
        return {"num_cpus": cpus, "num_gpus": gpus, "peak_flops": None, "peak_source": source}
    # Measured again once the trials are done: the first reading can be taken while Ray's own processes are still
    # starting, and the peak is the better of the two (both go into the report).
    peaks = [peak_before, measure_machine_peak(cpus)]
    return {"num_cpus": cpus, "peak_flops": max(peaks), "peak_flops_measured": peaks}


def _worker_cpus(run: Any) -> float:
    """CPUs one trial's worker group takes."""
    return float(run.num_workers * run.cpus_per_worker)


def _cluster_size(started: bool, cpus: float, gpus: float) -> tuple[float, float]:
    """(CPUs, GPUs) the sweep may plan for: the local instance's; for a cluster it connected to, the most its
    autoscaler may start (Ray's own reading of the cluster config, as Ray Train takes it) when larger than now."""
    from pipelines.infra.ray_runtime import autoscaler_max_resources

    if started:
        return cpus, gpus
    most = autoscaler_max_resources()  # {} for a fixed cluster: what is there now
    return max(cpus, float(most.get("CPU", 0) or 0)), max(gpus, float(most.get("GPU", 0) or 0))


def _fitting_trials(size: tuple[float, float], trial_cpus: float, worker_cpus: float, worker_gpus: float) -> int:
    """How many trials run at once (max_concurrent 0): each holds its driver's CPU and its workers' CPUs (and one
    GPU per worker), so a driver never waits on CPUs other drivers hold."""
    cpus, gpus = size
    n = int(cpus / max(trial_cpus + worker_cpus, 1e-9) + 1e-9)
    if worker_gpus:
        n = min(n, int(gpus // worker_gpus))
    return max(1, n)


def _longest_first(pending: list[TrialPlan]) -> list[str]:
    """Trial ids, the longest expected first (fewer idle cores at the end of the sweep): most training FLOPs, then
    the smallest model (small models reach the lowest fraction of peak, so the same FLOPs take them longest)."""

    def cost(tp: TrialPlan) -> tuple:
        flops = sum(r.plan.cfg.budget_flops for r in tp.runs)
        return (-flops, tp.runs[0].plan.params, tp.trial.trial_id)

    return [tp.trial.trial_id for tp in sorted(pending, key=cost)]


def _goodput(
    client: Any, parent: str, records: list[dict], pending: list[TrialPlan], wall: float, machine: Optional[dict]
) -> Optional[dict]:
    """Goodput and time breakdown of the trials this invocation ran; logged to the parent run; None if none ran."""
    from jobs.sweep.goodput import format_goodput, gpu_peak, sweep_goodput
    from pipelines.infra import tracking

    ran = {tp.trial.trial_id for tp in pending}
    if not machine or not ran:
        return None
    ran_records = [r for r in records if r["trial_id"] in ran]
    if machine.get("num_gpus"):
        machine = {**machine, "peak_flops": gpu_peak(ran_records, machine["num_gpus"])}
    g = sweep_goodput(ran_records, wall_s=wall, **machine)
    metrics = {
        **({"goodput": g["goodput"]} if g["goodput"] is not None else {}),
        **{f"time_{k}": v for k, v in g["time"].items()},
    }
    tracking.log_metrics(client, parent, metrics, 0)
    client.log_text(parent, json.dumps(g, indent=2), "goodput.json")
    print(f"[ditscale] {format_goodput(g)}", flush=True)
    return g


PREVIOUS_FAILURE = "failed.previous.json"  # a rerun trial's earlier failed.json, kept for the record


def _set_aside_failures(sdir: str, pending: list[TrialPlan]) -> None:
    """A trial about to run again has its earlier failed.json renamed failed.previous.json: one that dies without
    a record this time (its process killed) then reads as missing, not as that old failure with its reasons and
    its training FLOPs counted in this invocation's goodput."""
    for tp in pending:
        tdir = trial_dir(sdir, tp.trial.trial_id)
        failed = storage.join(tdir, FAILED)
        if storage.exists(failed):
            storage.write_json(storage.join(tdir, PREVIOUS_FAILURE), storage.read_json(failed))
            storage.delete(failed)


def _records(sdir: str, plans: list[TrialPlan]) -> list[dict[str, Any]]:
    """Each trial's record: done.json, else failed.json, else "missing"."""
    out = []
    for tp in plans:
        tdir = trial_dir(sdir, tp.trial.trial_id)
        for name in (DONE, FAILED):
            if storage.exists(storage.join(tdir, name)):
                out.append(storage.read_json(storage.join(tdir, name)))
                break
        else:
            out.append({"trial_id": tp.trial.trial_id, "name": tp.trial.name, "status": "missing", "points": []})
    return out


def _all_trained(tp: TrialPlan) -> bool:
    """Every training run of the trial finished before (by a trial with other evaluation settings, or this one)."""
    from jobs.train.driver import trained

    return all(trained(spec.plan.run_dir) for spec in tp.runs)


def _reused_runs(plans: list[TrialPlan]) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """Finished runs of the grid that other training code trained, in part or whole (run name -> those codes), and
    those trained on other Python, torch or numpy versions (run name -> those versions); each result.json read once."""
    from jobs.train.driver import codes_besides, finished_result

    codes, software = {}, {}
    for tp in plans:
        for spec in tp.runs:
            result = finished_result(spec.plan)
            if other := codes_besides(result, spec.plan.code):
                codes[spec.plan.run_name] = other
            if versions := software_besides(result):
                software[spec.plan.run_name] = versions
    return codes, software


def _say_other_software(cfg: SweepConfig, runs: dict[str, dict[str, str]], which: str) -> None:
    words = software_words(merged_versions(runs.values()))
    print(
        f"[ditscale] sweep {cfg.name}: {len(runs)} finished training run(s) {which}: trained, in part or whole, on "
        f"other software ({words}), e.g. {sorted(runs)[0]}: the same code and settings can round differently "
        "there. To retrain them here, start afresh (another sweep name or output; `ditscale quickstart --force`).",
        flush=True,
    )


def _say_other_code(cfg: SweepConfig, runs: dict[str, list[str]], code: str, which: str) -> None:
    codes = sorted({c for v in runs.values() for c in v})
    print(
        f"[ditscale] sweep {cfg.name}: {len(runs)} finished training run(s) {which}: trained, in part or whole, "
        f"by other training code (fingerprint {', '.join(codes)}; this code {code}), e.g. {sorted(runs)[0]}. Runs "
        "are matched by their settings, not their code: if the change alters training or evaluation, start afresh "
        "(another sweep name or output; `ditscale quickstart --force`).",
        flush=True,
    )


def sweep_tracking_uri(cfg: SweepConfig) -> str:
    """The sweep's MLflow store, checked: its own mlflow.tracking_uri, else its base config's (the store every trial
    is validated against, also by --validate-only), else the default store."""
    from pipelines.infra import tracking

    base_uri = (sweep_base(cfg).get("mlflow") or {}).get("tracking_uri")
    try:
        tracking_uri = tracking.check_tracking_uri(cfg.mlflow.tracking_uri or base_uri)
        tracking.client(tracking_uri)  # a store MLflow cannot use (file://, a missing driver) is named here
    except tracking.TrackingURIError as e:
        raise ConfigError(f"mlflow.tracking_uri: {e}") from e
    return tracking_uri


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Validate the whole grid, then run the missing (or failed) trials; {"trials": [...], "complete", ...}."""
    from pipelines.infra import tracking

    t_start = time.time()
    tracking_uri = cfg.mlflow.tracking_uri = sweep_tracking_uri(cfg)
    plans = plan_trials(expand_grid(cfg), cfg.mode)
    sdir = sweep_dir(cfg)
    storage.makedirs(sdir)
    parent = _parent_run(cfg, sdir, tracking_uri, len(plans))
    try:
        return _run_grid(cfg, plans, sdir, parent, tracking_uri, t_start)
    except BaseException as e:  # whatever stops it (a config error found once Ray is up, Ray or Tune failing, a
        # record that cannot be read, Ctrl-C), the parent run is not left RUNNING
        reason = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        try:
            tracking.end_run(tracking.client(tracking_uri, check=False), parent, "failed", reason)
        except Exception as store_error:  # noqa: BLE001 - the store failing too must not hide why the sweep stopped
            print(f"[ditscale] warning: sweep run {parent} not marked FAILED: {store_error}", file=sys.stderr)
        raise


def _adopt(tracking_uri: str, child: str | None, parent: str) -> None:
    """Put a finished trial's MLflow run under this sweep's parent run: a parent deleted in the UI is replaced by a
    new one, and the fits read the trials under it (the finished trials, never re-attached, stayed under the old)."""
    if not child:
        return
    from pipelines.infra import tracking

    try:
        tracking.client(tracking_uri, check=False).set_tag(child, tracking.PARENT_TAG, parent)
    except Exception as exc:  # noqa: BLE001 - a trial run deleted too: its done.json still holds its points
        print(
            f"[ditscale] warning: trial run {child} could not be put under sweep run {parent}: {exc}", file=sys.stderr
        )


def _run_grid(
    cfg: SweepConfig, plans: list, sdir: str, parent: str, tracking_uri: str, t_start: float
) -> dict[str, Any]:
    """run_sweep after its parent run is attached: record the grid, run the pending trials, end the parent run."""
    from pipelines.infra import tracking

    grid = {"trial_ids": [tp.trial.trial_id for tp in plans], "grid": _grid(cfg, len(plans))}
    tracking.client(tracking_uri, check=False).log_text(parent, json.dumps(grid, indent=2), tracking.GRID_ARTIFACT)
    pending = []
    for tp in plans:
        tdir = trial_dir(sdir, tp.trial.trial_id)
        if not storage.exists(storage.join(tdir, DONE)):
            pending.append(tp)
        else:  # a finished trial keeps its record, named and labelled as this grid names it
            record = restamped(
                tp.trial, tdir, storage.read_json(storage.join(tdir, DONE)), tp.runs[0].plan.tracking_uri
            )
            _adopt(tracking_uri, record.get("mlflow_run_id"), parent)
    evaluate_only = sum(_all_trained(tp) for tp in pending)
    code = training_code_fingerprint()
    other, other_software = _reused_runs(plans)
    if other:
        _say_other_code(cfg, other, code, "it reuses")  # finished before this invocation
    if other_software:
        _say_other_software(cfg, other_software, "it reuses")
    print(
        f"[ditscale] sweep {cfg.name}: {len(plans)} trials, {len(plans) - len(pending)} already done, "
        f"{len(pending)} to run"
        + (f" ({evaluate_only} of them only to evaluate runs trained before)" if evaluate_only else "")
        + f" (mode={cfg.mode})",
        flush=True,
    )
    machine = None
    if pending:
        _set_aside_failures(sdir, pending)
        machine = _run_tune(cfg, pending, sdir, parent)
    records = _records(sdir, plans)
    if pending:  # runs resumed (or WSD branches started) from checkpoints of other code are known once trained
        now, now_software = _reused_runs(plans)
        new = {k: v for k, v in now.items() if k not in other}
        if new:
            _say_other_code(cfg, new, code, "this invocation resumed or started from another code's checkpoints")
        new_software = {k: v for k, v in now_software.items() if k not in other_software}
        if new_software:
            _say_other_software(
                cfg, new_software, "this invocation resumed or started from checkpoints other software wrote"
            )
        other, other_software = now, now_software
    failed = [r["name"] for r in records if r["status"] != "finished"]
    complete = not failed or (cfg.allow_failures and all(r["status"] != "missing" for r in records))
    client = tracking.client(tracking_uri, check=False)
    wall = time.time() - t_start
    client.log_metric(parent, "wall_s", wall)
    goodput = _goodput(client, parent, records, pending, wall, machine)
    # An incomplete sweep is FAILED with the trials that did not finish (the next invocation re-opens it).
    tracking.end_run(client, parent, *(("finished",) if complete else ("failed", f"not finished: {', '.join(failed)}")))
    return {
        "sweep_dir": sdir,
        "parent_run_id": parent,
        "experiment": cfg.mlflow.experiment,
        "trials": records,
        "complete": complete,
        "failed": failed,
        "wall_s": wall,
        "tracking_uri": tracking_uri,
        "goodput": goodput,
        # What this invocation ran: trials already done are skipped; evaluate-only trials trained nothing.
        "trials_run": len(pending),
        "trials_evaluate_only": evaluate_only,
        "code_fingerprint": code,  # the training code this invocation ran (pipelines/infra/code.py)
        "runs_from_other_code": len(other),  # runs of the grid another training code trained, in part or whole
        "runs_on_other_software": len(other_software),  # runs of the grid other Python / torch / numpy trained, in part
        "trials_done_before": len(plans) - len(pending),
    }


def format_table(out: dict) -> str:
    """Human table of the sweep's points."""
    lines = [f"{'trial':34s} {'budget':>10s} {'step':>6s} {'val_loss':>9s} {'fid':>9s}  status"]
    for r in out["trials"]:
        if not r["points"]:
            lines.append(f"{r['name'][:34]:34s} {'-':>10s} {'-':>6s} {'-':>9s} {'-':>9s}  {r['status']}")
        for p in r["points"]:
            vl = f"{p['val_loss']:.4f}" if p.get("val_loss") is not None else "-"
            fid = f"{p['fid']:.3f}" if p.get("fid") is not None else "-"
            lines.append(
                f"{r['name'][:34]:34s} {p['budget_flops']:10.3g} {p['step']:6d} {vl:>9s} {fid:>9s}  {r['status']}"
            )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m jobs.sweep`: the `ditscale sweep` command (jobs/cli/sweep.py)."""
    from jobs.cli.sweep import main as cli_main

    return cli_main(argv)
