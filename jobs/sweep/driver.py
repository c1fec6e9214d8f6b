"""`ditscale sweep` / `python -m jobs.sweep`: a models x budgets (x hyper-parameters) scaling grid on Ray Tune.

Each trial is one (model, hyper-parameters) cell; it measures FID at every budget point and is one MLflow
child run under the sweep's parent run (tags ditscale.role=trial / mlflow.parentRunId), logging `points.json`.
Tune runs a FUNCTION trainable (Ray Train V2 cannot be passed to Tuner directly) that launches ONE Ray Train
run per trial (jobs.train.train_runs): its worker group trains the trial's training runs (one per budget, or a
WSD main run and its branches) one after the other, each in its own directory <sweep>/runs/<trial id>/<run>
with its own MLflow run, and the trial's reports reach Tune through TuneReportCallback.

Budget modes:
  separate  one training run per budget (each with its own full LR schedule).
  wsd       one warmup-stable-decay run to the largest budget; for each smaller budget B a short branch
            resumes the main run's checkpoint at the START of B's decay phase (step (1 - decay_fraction) * S_B,
            still in the shared stable phase, so its state is exactly what a run to B would have) and decays to
            S_B. Every point is a properly decayed model (Hägele et al. 2024) at ~(1 + decay_fraction) x the
            cost of the largest run alone, instead of the sum over budgets.

Restart: trial ids are deterministic (hash of the trial's resolved config); a finished trial writes
<sweep dir>/trials/<id>/done.json; the parent/child MLflow run ids are kept in the sweep dir; a trial that
was interrupted skips its runs that wrote result.json and resumes the others from their latest checkpoints.
Running the same command again therefore finishes only what is missing.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

from ditcore.config import ConfigError, apply_overrides, from_dict, to_dict
from jobs.train.config import TrainConfig, model_display_name, wsd_decay_start
from pipelines.infra import storage
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"


@dataclass
class SweepMlflow:
    """Where the sweep is recorded: one experiment, a parent run, a child run per trial."""

    tracking_uri: Optional[str] = None
    experiment: str = "ditscale-sweep"


@dataclass
class SweepConfig:
    """A scaling grid: models x budgets x optional hyper-parameters over a shared base TrainConfig."""

    name: str = "sweep"  # sweep directory name under `output`; also the default MLflow parent run name
    output: str = "outputs/sweeps"  # local dir or s3:// prefix; checkpoints go to <output>/<name>/runs/<trial>/<run>
    base_config: Optional[str] = None  # a TrainConfig YAML the `base` dict is applied on top of
    base: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys shared by every trial
    models: list[Any] = field(default_factory=list)  # preset names, or dicts of model fields (depth, hidden_size...)
    budgets: list[float] = field(default_factory=list)  # training FLOPs per point
    hparams: dict[str, list[Any]] = field(default_factory=dict)  # dotted TrainConfig key -> values (grid)
    mode: Literal["separate", "wsd"] = "separate"
    max_concurrent: int = 0  # 0: as many as the cluster's CPUs fit (workers x cpus_per_worker per trial)
    trial_cpus: float = 0.1  # CPU of the trial driver itself (fractional so it never blocks its own workers)
    num_cpus: Optional[int] = None  # local ray.init(num_cpus=...) when no cluster address is set
    mlflow: SweepMlflow = field(default_factory=SweepMlflow)


def _model_spec(entry: Any, base_model: dict) -> dict:
    """A grid `models` entry -> ModelSpec dict (preset name, or fields overriding the base model)."""
    if isinstance(entry, str):
        return {**{k: v for k, v in base_model.items() if k in ("adapt_to_data",)}, "preset": entry,
                "overrides": dict(base_model.get("overrides") or {})}
    if isinstance(entry, dict):
        if set(entry) & {"preset", "overrides", "name", "adapt_to_data"}:
            return {**base_model, **entry}
        if "arch" in entry:
            return {**base_model, "preset": None, "overrides": dict(entry)}
        return {**base_model, "overrides": {**(base_model.get("overrides") or {}), **entry}}
    raise ConfigError(f"models: entries must be preset names or mappings, got {entry!r}")


@dataclass
class Trial:
    """One grid cell: a model + hyper-parameters, trained to every budget."""

    trial_id: str
    name: str
    train: dict  # TrainConfig dict for the LARGEST budget (per-budget runs derive from it)
    budgets: list[float]
    hparams: dict[str, Any]


def expand_grid(cfg: SweepConfig) -> list[Trial]:
    """Trials of the grid, with deterministic ids; validates every trial's TrainConfig (names bad keys)."""
    if not cfg.models:
        raise ConfigError("models: the sweep needs at least one model")
    if not cfg.budgets:
        raise ConfigError("budgets: the sweep needs at least one budget (FLOPs)")
    if any(b <= 0 for b in cfg.budgets):
        raise ConfigError(f"budgets: must be positive FLOPs, got {cfg.budgets}")
    base = {}
    if cfg.base_config:
        from pipelines.infra.config_files import read_yaml

        path = cfg.base_config
        if not os.path.exists(path):  # relative to the repository (configs/...) when not found from the cwd
            repo = str(Path(__file__).resolve().parents[2])
            if os.path.exists(os.path.join(repo, path)):
                path = os.path.join(repo, path)
        base = read_yaml(path)
    base = _merge(base, cfg.base)
    from_dict(TrainConfig, base, where="base")  # unknown keys in the base -> error naming base.<key>
    budgets = sorted(float(b) for b in cfg.budgets)
    keys = sorted(cfg.hparams)
    for k in keys:
        if not isinstance(cfg.hparams[k], list) or not cfg.hparams[k]:
            raise ConfigError(f"hparams.{k}: expected a non-empty list of values")
    combos = list(itertools.product(*(cfg.hparams[k] for k in keys))) or [()]
    trials = []
    base_model = dict(base.get("model") or {})
    for model_entry in cfg.models:
        spec = _model_spec(model_entry, base_model)
        for combo in combos:
            hp = dict(zip(keys, combo))
            d = _merge(base, {"model": spec, "budget_flops": budgets[-1]})
            d = apply_overrides(d, [f"{k}={json.dumps(v)}" for k, v in hp.items()])
            d.setdefault("run", {})
            d.setdefault("checkpoint", {})
            d.setdefault("mlflow", {})
            if cfg.mode == "wsd":
                d.setdefault("optim", {})["schedule"] = "wsd"
            d["checkpoint"]["storage"] = storage.join(sweep_dir(cfg), "runs")
            d["mlflow"]["experiment"] = cfg.mlflow.experiment
            if cfg.mlflow.tracking_uri:
                d["mlflow"]["tracking_uri"] = cfg.mlflow.tracking_uri
            try:
                tc = from_dict(TrainConfig, d)
            except ConfigError as e:
                raise ConfigError(f"trial {model_entry!r} {hp}: {e}") from e
            ident = {"model": to_dict(tc.model), "hp": hp, "mode": cfg.mode, "budgets": budgets,
                     "train": {k: v for k, v in to_dict(tc).items() if k not in ("checkpoint", "mlflow", "run", "budget_flops")},
                     "workers": tc.run.num_workers, "seed": tc.run.seed}
            tid = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
            label = model_display_name(tc.model).replace("/", "_")
            hp_label = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in hp.items())
            trials.append(Trial(trial_id=f"{label}-{tid}", name=label + (f"[{hp_label}]" if hp_label else ""),
                                train=to_dict(tc), budgets=budgets, hparams=hp))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ConfigError("models/hparams: the grid contains duplicate trials")
    return trials


def _merge(a: dict, b: dict) -> dict:
    out = json.loads(json.dumps(a or {}))
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def sweep_dir(cfg: SweepConfig) -> str:
    """<output>/<name> (absolute for local paths)."""
    root = cfg.output if storage.is_s3(cfg.output) else os.path.abspath(os.path.expanduser(cfg.output))
    return storage.join(root, cfg.name)


def trial_storage(trial: Trial) -> str:
    """<sweep>/runs/<trial id>: the trial's Ray Train run directory; its training runs are subdirectories."""
    return storage.join(trial.train["checkpoint"]["storage"], trial.trial_id)


def _trial_configs(trial: Trial, mode: str) -> list[tuple[TrainConfig, dict]]:
    """(TrainConfig, role) per training run of a trial; the first is the main (largest-budget) run."""
    base = _merge(trial.train, {"checkpoint": {"storage": trial_storage(trial)}})
    runs = []
    main_cfg = from_dict(TrainConfig, _merge(base, {"run": {"name": f"{trial.trial_id}-main"}}))
    runs.append((main_cfg, {"budget": trial.budgets[-1], "role": "main"}))
    for i, b in enumerate(trial.budgets[:-1]):
        extra = {"budget_flops": b, "run": {"name": f"{trial.trial_id}-b{i}"}}
        if mode == "wsd":
            # A branch only trains its decay phase: learning-curve points before it would not exist.
            extra["eval"] = {"fractions": []}
        c = from_dict(TrainConfig, _merge(base, extra))
        runs.append((c, {"budget": b, "role": "branch" if mode == "wsd" else "separate"}))
    return runs


def validate_trials(trials: list[Trial], mode: str) -> dict[str, list]:
    """Resolve every run of every trial (manifest vs model, budget >= one step, MLflow) before any cluster work."""
    from jobs.train.driver import validate_config

    resolved: dict[str, list] = {}
    checked_mlflow = False
    for t in trials:
        rs = []
        for c, role in _trial_configs(t, mode):
            try:
                rs.append((validate_config(c, check_mlflow=not checked_mlflow), role))
            except ConfigError as e:
                raise ConfigError(f"trial {t.name} at budget {role['budget']:.3g}: {e}") from e
            checked_mlflow = True
        resolved[t.trial_id] = rs
    return resolved


def _child_run(trial: Trial, tdir: str, parent_run_id: Optional[str], tracking_uri: Optional[str], experiment: str,
               res0) -> Optional[str]:
    """The trial's MLflow child run (reused after a driver restart)."""
    if tracking_uri is None:
        return None
    from pipelines.infra.tracking import PARENT_TAG, ROLE_TAG, ensure_experiment, get_client

    client = get_client(tracking_uri, check=False)
    marker = storage.join(tdir, "child_run.json")
    if storage.exists(marker):
        rid = storage.read_json(marker)["run_id"]
        try:
            client.get_run(rid)
            client.update_run(rid, status="RUNNING")
            return rid
        except Exception:  # noqa: BLE001 - gone: make a new one
            pass
    exp_id = ensure_experiment(client, experiment)
    tags = {ROLE_TAG: ROLE_TRIAL, "mlflow.runName": trial.name, "ditscale.trial_id": trial.trial_id}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = client.create_run(exp_id, run_name=trial.name, tags=tags)
    storage.write_json(marker, {"run_id": run.info.run_id})
    from jobs.train.driver import _log_params_once

    cfg = from_dict(TrainConfig, trial.train)
    _log_params_once(client, run.info.run_id, {
        "model": model_display_name(cfg.model), "params": res0.flops["params"],
        "train_flops_per_image": res0.flops["train_flops_per_image"], "budgets": json.dumps(trial.budgets),
        "lr": cfg.optim.lr, "batch_size": cfg.data.batch_size, "data_manifest": cfg.data.manifest,
        "schedule": cfg.optim.schedule, "hparams": json.dumps(trial.hparams), "trial_id": trial.trial_id,
        "model_config": json.dumps(res0.model_config),
    })
    return run.info.run_id


def run_trial(trial: dict, callbacks: Optional[list] = None) -> dict:
    """Train + evaluate one trial at every budget (inside a Tune trial, or directly); idempotent via done.json.

    All training runs of the trial (one per budget, or the WSD main run and its decay branches) are trained in
    order by ONE Ray Train run named after the trial, so the worker group starts once per trial.
    """
    from jobs.train.driver import finish_run, prepare_run, run_dir, steps_for_budget, train_runs, validate_config

    t = Trial(**trial["trial"])
    tdir = storage.join(trial["sweep_dir"], "trials", t.trial_id)
    done = storage.join(tdir, "done.json")
    if storage.exists(done):
        return storage.read_json(done)
    mode = trial["mode"]
    runs = [(validate_config(c, check_mlflow=False), role) for c, role in _trial_configs(t, mode)]
    res_main = runs[0][0]
    child = _child_run(t, tdir, trial.get("parent_run_id"), res_main.tracking_uri, res_main.cfg.mlflow.experiment,
                       res_main)
    fpi = res_main.flops["train_flops_per_image"]
    gb = res_main.cfg.data.batch_size
    branch_steps = []
    if mode == "wsd":
        branch_steps = [wsd_decay_start(steps_for_budget(r.cfg.budget_flops, fpi, gb), r.cfg.optim) for r, _ in runs[1:]]
    points, statuses = [], []
    t0 = time.time()
    prepared = []
    for i, (res, role) in enumerate(runs):
        cfg = res.cfg
        kwargs: dict[str, Any] = {"tags": {"ditscale.trial_id": t.trial_id, "ditscale.budget_role": role["role"]}}
        if i == 0:
            kwargs.update(mlflow_run_id=child, branch_steps=branch_steps)
        else:
            kwargs.update(parent_run_id=child)
            if mode == "wsd" and branch_steps[i - 1] > 0:
                init = storage.join(run_dir(runs[0][0].cfg, runs[0][0].run_name), "checkpoints",
                                    f"step_{branch_steps[i - 1]:08d}")
                cfg = from_dict(TrainConfig, _merge(to_dict(cfg), {"checkpoint": {"init_from": init}}))
                res = validate_config(cfg, check_mlflow=False)
        prepared.append(prepare_run(cfg, resolved=res, **kwargs))
    ev = res_main.cfg.eval
    if ev.num_samples > 0 and ev.num_actors == 0:
        # This process evaluates the points itself once training is done; it idles while the workers train,
        # so it loads the VAE and feature net (and imports diffusers) meanwhile.
        import threading

        from jobs.evaluation.fid import preload

        def _preload(uri: str) -> None:
            try:
                preload(uri)
            except Exception:  # noqa: BLE001 - evaluation loads them again and reports the error with context
                pass

        threading.Thread(target=_preload, args=(res_main.cfg.data.manifest,), name="eval-preload", daemon=True).start()
    train_runs(prepared, trial_storage(t), callbacks=callbacks)
    for i, ((_, role), run) in enumerate(zip(runs, prepared)):
        out = finish_run(run)
        statuses.append(out["status"])
        for p in out.get("points", []):
            # wsd: the main run's points at smaller budgets are undecayed; the branch of each budget replaces them.
            # separate: every point of a run counts, learning-curve points (eval.fractions) included.
            if mode == "separate" or abs(p["budget_flops"] - role["budget"]) <= 1e-6 * role["budget"]:
                points.append({**p, "run": out.get("run_name"), "mode": mode, "main": i == 0})
    points.sort(key=lambda p: p["budget_flops"])
    from_main = [p.pop("main") for p in points]
    status = "finished" if all(s == "finished" for s in statuses) else "failed"
    if child is not None:
        from mlflow.entities import Metric

        from pipelines.infra.tracking import POINTS_ARTIFACT, get_client

        client = get_client(res_main.tracking_uri, check=False)
        ts = int(time.time() * 1000)
        ms = []
        for p, own in zip(points, from_main):
            if own:  # the main run logged its own points into the child already
                continue
            if p.get("fid") is not None:
                ms.append(Metric("fid", float(p["fid"]), ts, int(p["step"])))
            if p.get("val_loss") is not None:
                ms.append(Metric("val_loss_at_budget", float(p["val_loss"]), ts, int(p["step"])))
        if ms:
            client.log_batch(child, metrics=ms)
        client.log_text(child, json.dumps(points, indent=2), POINTS_ARTIFACT)
        client.set_tag(child, "ditscale.status", status)
        client.set_terminated(child, status="FINISHED" if status == "finished" else "FAILED")
    record = {"trial_id": t.trial_id, "name": t.name, "status": status, "points": points,
              "mlflow_run_id": child, "wall_s": time.time() - t0}
    storage.write_json(done, record)
    return record


def _tune_trainable(config: dict) -> None:
    """Ray Tune function trainable: one trial = run_trial with Train reports forwarded to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    rec = run_trial(config["trial"], callbacks=[TuneReportCallback()])
    fids = [p["fid"] for p in rec["points"] if p.get("fid") is not None]
    tune.report({"done": 1, "status": rec["status"], "num_points": len(rec["points"]),
                 "best_fid": min(fids) if fids else float("nan")})


def _tune_trial_name(tune_trial) -> str:
    """Tune trial (dir) name = our deterministic trial id."""
    return str(tune_trial.config["trial"]["trial"]["trial_id"])


def _parent_run(cfg: SweepConfig, sdir: str, tracking_uri: str, trials: list[Trial]) -> str:
    from pipelines.infra.tracking import ROLE_TAG, ensure_experiment, get_client

    client = get_client(tracking_uri, check=False)
    marker = storage.join(sdir, "sweep.json")
    if storage.exists(marker):
        rec = storage.read_json(marker)
        if rec.get("tracking_uri") == tracking_uri:
            try:
                client.get_run(rec["parent_run_id"])
                client.update_run(rec["parent_run_id"], status="RUNNING")
                return rec["parent_run_id"]
            except Exception:  # noqa: BLE001
                pass
    exp_id = ensure_experiment(client, cfg.mlflow.experiment)
    run = client.create_run(exp_id, run_name=cfg.name, tags={ROLE_TAG: ROLE_SWEEP, "mlflow.runName": cfg.name})
    rid = run.info.run_id
    storage.write_json(marker, {"parent_run_id": rid, "tracking_uri": tracking_uri, "experiment": cfg.mlflow.experiment})
    from jobs.train.driver import _log_params_once

    _log_params_once(client, rid, {"mode": cfg.mode, "budgets": json.dumps(sorted(cfg.budgets)),
                                   "models": json.dumps(cfg.models), "hparams": json.dumps(cfg.hparams),
                                   "num_trials": len(trials), "sweep_dir": sdir})
    client.log_text(rid, json.dumps(to_dict(cfg), indent=2), "config/sweep.json")
    return rid


def run_sweep(cfg: SweepConfig) -> dict:
    """Validate the whole grid, then run the missing trials on Ray Tune; returns {"trials": [...], ...}."""
    import ray
    from ray import tune

    from pipelines.infra.tracking import TrackingURIError, check_tracking_uri

    t_start = time.time()
    trials = expand_grid(cfg)
    try:
        tracking_uri = check_tracking_uri(cfg.mlflow.tracking_uri)
    except TrackingURIError as e:
        raise ConfigError(f"mlflow.tracking_uri: {e}") from e
    for t in trials:
        t.train["mlflow"]["tracking_uri"] = tracking_uri
    validate_trials(trials, cfg.mode)
    sdir = sweep_dir(cfg)
    storage.makedirs(sdir)
    parent = _parent_run(cfg, sdir, tracking_uri, trials)
    pending = [t for t in trials if not storage.exists(storage.join(sdir, "trials", t.trial_id, "done.json"))]
    print(f"[ditscale] sweep {cfg.name}: {len(trials)} trials, {len(trials) - len(pending)} already done, "
          f"{len(pending)} to run (mode={cfg.mode})", flush=True)
    if pending:
        from jobs.train.driver import ensure_ray

        ensure_ray(cfg.num_cpus)  # a fresh local instance of that size when no cluster address is set
        first = from_dict(TrainConfig, pending[0].train)
        per_trial = first.run.num_workers * first.run.cpus_per_worker
        max_conc = cfg.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1) // max(per_trial, 1e-9)))
        configs = [{"trial": t.__dict__, "sweep_dir": sdir, "mode": cfg.mode, "parent_run_id": parent} for t in pending]
        trainable = tune.with_resources(_tune_trainable, {"cpu": cfg.trial_cpus})
        fs, fs_path = storage.get_fs(storage.join(sdir, "tune"))
        if not storage.is_s3(sdir):
            os.makedirs(fs_path, exist_ok=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_conc, trial_name_creator=_tune_trial_name,
                                        trial_dirname_creator=_tune_trial_name),
            run_config=tune.RunConfig(name=f"tune-{int(time.time())}", storage_path=fs_path, storage_filesystem=fs,
                                      verbose=0),
        )
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        if errors:
            print(f"[ditscale] {len(errors)} trial(s) errored; first: {errors[0]}", file=sys.stderr)
    records = []
    for t in trials:
        done = storage.join(sdir, "trials", t.trial_id, "done.json")
        records.append(storage.read_json(done) if storage.exists(done) else {"trial_id": t.trial_id, "name": t.name,
                                                                             "status": "missing", "points": []})
    complete = all(r["status"] != "missing" for r in records)
    from pipelines.infra.tracking import get_client

    client = get_client(tracking_uri, check=False)
    wall = time.time() - t_start
    client.log_metric(parent, "wall_s", wall)
    if complete:
        client.set_terminated(parent, status="FINISHED")
    return {"sweep_dir": sdir, "parent_run_id": parent, "experiment": cfg.mlflow.experiment, "trials": records,
            "complete": complete, "wall_s": wall, "tracking_uri": tracking_uri}


def load_sweep_config(path: Optional[str], overrides: Sequence[str] = ()) -> SweepConfig:
    """YAML + k=v overrides -> SweepConfig (errors name the key)."""
    from pipelines.infra.config_files import load_config

    return load_config(SweepConfig, path, overrides)


def format_table(out: dict) -> str:
    """Human table of the sweep's points."""
    lines = [f"{'trial':34s} {'budget':>10s} {'step':>6s} {'val_loss':>9s} {'fid':>9s}  status"]
    for r in out["trials"]:
        if not r["points"]:
            lines.append(f"{r['name'][:34]:34s} {'-':>10s} {'-':>6s} {'-':>9s} {'-':>9s}  {r['status']}")
        for p in r["points"]:
            vl = f"{p['val_loss']:.4f}" if p.get("val_loss") is not None else "-"
            fid = f"{p['fid']:.3f}" if p.get("fid") is not None else "-"
            lines.append(f"{r['name'][:34]:34s} {p['budget_flops']:10.3g} {p['step']:6d} {vl:>9s} {fid:>9s}  {r['status']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale sweep`."""
    p = argparse.ArgumentParser(prog="ditscale sweep", description="models x budgets scaling grid on Ray Tune, "
                                "tracked in MLflow (rerun the same command to finish an interrupted sweep)",
                                epilog="example: ditscale sweep --config configs/sweep/tiny.yaml mode=wsd")
    p.add_argument("--config", help="YAML SweepConfig (configs/sweep/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. budgets=[1e12,3e12]")
    p.add_argument("--validate-only", action="store_true", help="expand + validate the grid and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = load_sweep_config(args.config, args.overrides)
        if args.validate_only:
            trials = expand_grid(cfg)
            validate_trials(trials, cfg.mode)
            print(f"{len(trials)} trials OK")
            return 0
        out = run_sweep(cfg)
    except ConfigError as e:
        print(f"ditscale sweep: config error: {e}", file=sys.stderr)
        return 2
    print(format_table(out))
    print(f"[ditscale] sweep {'complete' if out['complete'] else 'INCOMPLETE'} in {out['wall_s']:.1f} s; "
          f"MLflow experiment {out['experiment']!r}, parent run {out['parent_run_id']}; dir {out['sweep_dir']}")
    return 0 if out["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
