"""`ditscale train` / `python -m jobs.train`: train one model to a FLOPs budget on Ray Train (TorchTrainer).

`run_training(cfg)` validates the whole config against the dataset manifest and the MLflow store BEFORE any
cluster work, then runs `jobs.train_loop.train_loop_per_worker` on `run.num_workers` workers (DDP, or FSDP2),
recovering from worker failures from the latest checkpoint (FailureConfig.max_failures), and finally measures
FID at every budget point with jobs.evaluate. A restarted driver with the same config resumes the same run
(same storage dir + run name: Ray Train restores its checkpoint list; the MLflow run id is kept next to it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import numpy as np

from ditcore.config import ConfigError, to_dict
from ditcore.flops import flops_summary
from ditcore.models import PRESETS, config_to_dict, resolve_config
from jobs.train.config import TrainConfig, model_display_name, run_name
from jobs.train.loop import RESULT_NAME
from pipelines.infra import storage
ROLE_TRAIN = "train"


@dataclass
class Resolved:
    """Everything derived from the config + manifest before touching the cluster."""

    cfg: TrainConfig
    manifest: dict
    model_config: dict
    flops: dict
    text_tokens: Optional[int]
    total_steps: int
    point_steps: dict[int, float]  # step -> budget (FLOPs) at that point
    tracking_uri: Optional[str]
    run_name: str


def steps_for_budget(budget_flops: float, train_flops_per_image: float, global_batch: int) -> int:
    """ceil(budget / (train FLOPs per image x global batch)): the number of optimizer steps of a budget."""
    return int(math.ceil(budget_flops / (train_flops_per_image * global_batch) - 1e-9))


_DATA_FIELDS = ("input_size", "in_channels", "text_dim", "pooled_dim", "max_text_len", "num_classes")


def resolve_model_config(cfg: TrainConfig, manifest: dict) -> dict:
    """Model config dict from the spec, adapted to / checked against the dataset manifest (errors name keys)."""
    spec = cfg.model
    if spec.preset is not None and spec.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {spec.preset!r}; known: {', '.join(PRESETS)}")
    overrides = dict(spec.overrides)
    if cfg.optim.mup:
        overrides["mup"] = True
    try:
        base = resolve_config(spec.preset) if spec.preset else None
        arch = base.arch if base is not None else overrides.get("arch")
        if arch not in ("dit", "mmdit"):
            raise ConfigError("model.overrides.arch: must be 'dit' or 'mmdit' when model.preset is null")
        vae = manifest.get("vae") or {}
        text = manifest.get("text")
        data_values: dict[str, Any] = {"input_size": vae.get("latent_size"), "in_channels": vae.get("latent_channels")}
        if arch == "mmdit":
            if not text:
                raise ConfigError(
                    f"data.manifest {cfg.data.manifest!r} has no text embeddings (manifest 'text' is null) but model "
                    f"{model_display_name(spec)!r} is text-conditional (mmdit)"
                )
            data_values.update(text_dim=text.get("dim"), pooled_dim=text.get("pooled_dim"))
        else:
            if manifest.get("num_classes") is None:
                raise ConfigError(
                    f"data.manifest {cfg.data.manifest!r} has no class labels (num_classes null) but model "
                    f"{model_display_name(spec)!r} is class-conditional (dit)"
                )
            data_values["num_classes"] = manifest["num_classes"]
        if spec.adapt_to_data:
            for k, v in data_values.items():
                if k not in overrides and v is not None:
                    overrides[k] = v
            if arch == "mmdit" and "max_text_len" not in overrides and text and text.get("max_length"):
                overrides["max_text_len"] = int(text["max_length"])
        mc = resolve_config(base if base is not None else overrides, **(overrides if base is not None else {}))
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from e
    d = config_to_dict(mc)
    # Check model vs data, naming the model key and the manifest field.
    checks = [("in_channels", "vae.latent_channels", (manifest.get("vae") or {}).get("latent_channels")),
              ("input_size", "vae.latent_size", (manifest.get("vae") or {}).get("latent_size"))]
    if d["arch"] == "mmdit":
        checks += [("text_dim", "text.dim", text.get("dim")), ("pooled_dim", "text.pooled_dim", text.get("pooled_dim"))]
        if text.get("max_length") and d["max_text_len"] < int(text["max_length"]):
            raise ConfigError(f"model.max_text_len={d['max_text_len']} is shorter than the dataset's text.max_length="
                              f"{text['max_length']} (manifest {cfg.data.manifest})")
    else:
        if d["num_classes"] < int(manifest["num_classes"]):
            raise ConfigError(f"model.num_classes={d['num_classes']} < dataset num_classes={manifest['num_classes']} "
                              f"(manifest {cfg.data.manifest})")
    for key, mkey, mval in checks:
        if mval is not None and d[key] != mval:
            raise ConfigError(f"model.{key}={d[key]} does not match the dataset ({mkey}={mval} in manifest "
                              f"{cfg.data.manifest}/manifest.json)")
    if d["input_size"] % d["patch_size"]:
        raise ConfigError(f"model.patch_size={d['patch_size']} does not divide the latent size {d['input_size']}")
    return d


def validate_config(cfg: TrainConfig, *, check_mlflow: bool = True) -> Resolved:
    """All checks that need no cluster: manifest vs model, budget >= one step, batch split, MLflow reachable."""
    from pipelines.latents.reader import read_manifest

    if not cfg.data.manifest:
        raise ConfigError("data.manifest: required (the latent dataset directory, local or s3://)")
    try:
        manifest = read_manifest(cfg.data.manifest)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a config problem naming the file
        raise ConfigError(f"data.manifest: cannot read {cfg.data.manifest!r}: {e}") from e
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    import logging

    if not isinstance(logging.getLevelName(str(cfg.run.log_level).upper()), int):
        raise ConfigError(f"run.log_level: {cfg.run.log_level!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    if cfg.run.num_workers < 1:
        raise ConfigError(f"run.num_workers must be >= 1, got {cfg.run.num_workers}")
    if cfg.data.batch_size % cfg.run.num_workers:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by run.num_workers={cfg.run.num_workers}")
    if not 0.0 <= cfg.optim.decay_fraction <= 1.0:
        raise ConfigError(f"optim.decay_fraction must be in [0, 1], got {cfg.optim.decay_fraction}")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay must be in [0, 1), got {cfg.optim.ema_decay}")
    model_config = resolve_model_config(cfg, manifest)
    text = manifest.get("text")
    text_tokens = int(text["max_length"]) if (model_config["arch"] == "mmdit" and text and text.get("max_length")) else None
    flops = flops_summary(model_config, text_tokens)
    fpi = flops["train_flops_per_image"]
    one_step = fpi * cfg.data.batch_size
    if cfg.budget_flops < one_step:
        raise ConfigError(
            f"budget_flops={cfg.budget_flops:.4g} is smaller than one training step: {one_step:.4g} FLOPs "
            f"(train_flops_per_image {fpi:.4g} x batch {cfg.data.batch_size}); raise the budget or lower data.batch_size"
        )
    total = steps_for_budget(cfg.budget_flops, fpi, cfg.data.batch_size)
    points = {total: float(cfg.budget_flops)}
    for b in cfg.eval.budgets:
        if b > cfg.budget_flops * (1 + 1e-9):
            raise ConfigError(f"eval.budgets: {b:.4g} exceeds budget_flops={cfg.budget_flops:.4g}")
        if b < one_step:
            raise ConfigError(f"eval.budgets: {b:.4g} is smaller than one training step ({one_step:.4g} FLOPs)")
        points[steps_for_budget(b, fpi, cfg.data.batch_size)] = float(b)
    for i, fr in enumerate(cfg.eval.fractions):
        if not 0.0 < fr < 1.0:
            raise ConfigError(f"eval.fractions[{i}]: {fr} must be strictly between 0 and 1")
        b = fr * cfg.budget_flops
        if b < one_step:
            raise ConfigError(f"eval.fractions[{i}]: {fr} x budget_flops = {b:.4g} FLOPs is less than one training step "
                              f"({one_step:.4g} FLOPs)")
        points.setdefault(steps_for_budget(b, fpi, cfg.data.batch_size), float(b))
    if cfg.eval.num_samples > 0:
        from ditcore.samplers import SAMPLERS

        if cfg.eval.sampler not in SAMPLERS:
            raise ConfigError(f"eval.sampler: unknown sampler {cfg.eval.sampler!r}; known: {', '.join(SAMPLERS)}")
    tracking_uri = None
    if cfg.mlflow.enabled:
        from pipelines.infra.tracking import TrackingURIError, check_tracking_uri, resolve_tracking_uri

        if check_mlflow:
            try:
                tracking_uri = check_tracking_uri(cfg.mlflow.tracking_uri)
            except TrackingURIError as e:
                raise ConfigError(f"mlflow.tracking_uri: {e}") from e
        else:
            tracking_uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    return Resolved(cfg=cfg, manifest=manifest, model_config=model_config, flops=flops, text_tokens=text_tokens,
                    total_steps=total, point_steps=points, tracking_uri=tracking_uri, run_name=run_name(cfg))


def run_dir(cfg: TrainConfig, name: Optional[str] = None) -> str:
    """URI of the run's directory (<checkpoint.storage>/<run name>)."""
    return storage.join(_storage_root(cfg.checkpoint.storage), name or run_name(cfg))


def _storage_root(uri: str) -> str:
    return uri if storage.is_s3(uri) else os.path.abspath(os.path.expanduser(uri))


def make_plan(res: Resolved, *, mlflow_run_id: Optional[str] = None, branch_steps: Sequence[int] = (),
              rdir: Optional[str] = None) -> dict:
    """The dict every worker receives (train_loop_config): config, model, steps, data facts, val rows."""
    from pipelines.latents.reader import load_latents_numpy, load_null_text

    cfg = res.cfg
    vae = res.manifest.get("vae") or {}
    null_text = None
    if res.model_config["arch"] == "mmdit":
        nt = load_null_text(cfg.data.manifest)
        null_text = {k: np.asarray(v.float().numpy() if v.is_floating_point() else v.numpy()) for k, v in nt.items()}
    val = None
    if cfg.data.val_samples > 0:
        val = load_latents_numpy(cfg.data.manifest, limit=cfg.data.val_samples)
        val.pop("caption", None)
    return {
        "train": to_dict(cfg),
        "model_config": res.model_config,
        "train_flops_per_image": float(res.flops["train_flops_per_image"]),
        "total_steps": res.total_steps,
        "point_steps": sorted(res.point_steps),
        "branch_steps": sorted(set(int(s) for s in branch_steps)),
        "scaling_factor": float(vae.get("scaling_factor") or 1.0),
        "shift_factor": float(vae.get("shift_factor") or 0.0),
        "null_text": null_text,
        "val": val,
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": res.tracking_uri,
        "run_name": res.run_name,
        "run_dir": rdir,
        "params": int(res.flops["params"]),
        "init_from": cfg.checkpoint.init_from,
    }


def _row_bytes(manifest: dict) -> int:
    cols = manifest.get("columns") or {}
    total = 0
    for spec in cols.values():
        total += int(np.prod(spec.get("shape") or [1])) * np.dtype(spec.get("dtype", "float16")).itemsize
    return max(total, 1)


def _train_dataset(res: Resolved, val_ids: Optional[np.ndarray]):
    """Ray Dataset of training rows (validation rows held out), only the columns the model needs.

    Small sets (data.loader auto, < 512 MiB) are read once on the driver and handed to Ray Data as one Arrow
    table (no read tasks to schedule, which dominate for tiny sets); large ones stream through
    pipelines.dataset.read_latents.
    """
    import ray.data

    from pipelines.latents.reader import load_latents_numpy, read_latents

    cfg = res.cfg
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if cfg.run.deterministic:
        ctx.execution_options.preserve_order = True  # reproducible row order for bit-exact resume
    cols = ["id", "latent_mean", "latent_std", "latent_mean_flip", "latent_std_flip"]
    cols += ["text_emb", "text_mask", "text_pooled"] if res.model_config["arch"] == "mmdit" else ["label"]
    held = set(str(i) for i in val_ids) if val_ids is not None and len(val_ids) else set()
    n_rows = int((res.manifest.get("counts") or {}).get("written") or 0)
    loader = cfg.data.loader
    if loader == "auto":
        loader = "driver" if n_rows * _row_bytes(res.manifest) < (512 << 20) else "ray"
    if loader == "driver":
        import pyarrow as pa
        from ray.data.extensions import ArrowTensorArray

        rows = load_latents_numpy(cfg.data.manifest, columns=cols)
        if held:
            keep = ~np.isin(rows["id"].astype(str), np.asarray(sorted(held)))
            rows = {k: v[keep] for k, v in rows.items()}
        table = pa.table({k: (ArrowTensorArray.from_numpy(np.ascontiguousarray(v)) if v.ndim > 1
                              else pa.array(v.astype(str) if k == "id" else v)) for k, v in rows.items()})
        return ray.data.from_arrow(table)
    ds = read_latents(cfg.data.manifest).select_columns(cols)
    if held:
        ds = ds.filter(lambda row: str(row["id"]) not in held)
    if cfg.data.materialize:
        # Latent sets are compact: read + filter once into the object store instead of re-reading every epoch.
        ds = ds.materialize()
    return ds


def _mlflow_run(res: Resolved, rdir: str, *, mlflow_run_id: Optional[str], parent_run_id: Optional[str],
                tags: Optional[dict], extra_params: Optional[dict]) -> tuple[Optional[str], bool]:
    """(run id, owned): the caller's run, the run recorded in <run dir>/mlflow_run.json (driver restart), or new."""
    if not res.cfg.mlflow.enabled:
        return None, False
    from pipelines.infra.tracking import ROLE_TAG, ensure_experiment, get_client

    client = get_client(res.tracking_uri, check=False)
    owned = mlflow_run_id is None
    marker = storage.join(rdir, "mlflow_run.json")
    if mlflow_run_id is None and storage.exists(marker):
        rec = storage.read_json(marker)
        if rec.get("tracking_uri") == res.tracking_uri:
            try:
                client.get_run(rec["run_id"])
                mlflow_run_id = rec["run_id"]
                client.update_run(mlflow_run_id, status="RUNNING")
            except Exception:  # noqa: BLE001 - deleted/foreign store: start a new run
                mlflow_run_id = None
    if mlflow_run_id is None:
        exp_id = ensure_experiment(client, res.cfg.mlflow.experiment)
        run_tags = {ROLE_TAG: ROLE_TRAIN, "mlflow.runName": res.run_name, **(tags or {})}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=res.run_name, tags=run_tags)
        mlflow_run_id = run.info.run_id
        storage.write_json(marker, {"run_id": mlflow_run_id, "tracking_uri": res.tracking_uri})
    cfg = res.cfg
    params = {
        "model": model_display_name(cfg.model), "params": res.flops["params"],
        "train_flops_per_image": res.flops["train_flops_per_image"], "budget_flops": cfg.budget_flops,
        "budgets": json.dumps(sorted(res.point_steps.values())), "steps": res.total_steps, "lr": cfg.optim.lr,
        "batch_size": cfg.data.batch_size, "schedule": cfg.optim.schedule, "warmup_steps": cfg.optim.warmup_steps,
        "weight_decay": cfg.optim.weight_decay, "ema_decay": cfg.optim.ema_decay, "grad_clip": cfg.optim.grad_clip,
        "mup": cfg.optim.mup, "data_manifest": cfg.data.manifest, "num_workers": cfg.run.num_workers,
        "objective": json.dumps(to_dict(cfg.objective)), "model_config": json.dumps(res.model_config),
        "checkpoint_dir": storage.join(rdir, "checkpoints"), **(extra_params or {}),
    }
    _log_params_once(client, mlflow_run_id, params)
    try:
        client.log_text(mlflow_run_id, json.dumps(to_dict(cfg), indent=2), "config/train.json")
    except Exception:  # noqa: BLE001 - resolved config artifact is best effort (re-logged on restart)
        pass
    return mlflow_run_id, owned


def _log_params_once(client, run_id: str, params: dict) -> None:
    """Log params not yet on the run (MLflow params are immutable; a resumed driver logs the same values)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i:i + 100])


def ensure_ray(num_cpus: Optional[int] = None) -> None:
    """ray.init() once (RAY_ADDRESS or a local instance)."""
    import ray

    if not ray.is_initialized():
        from pipelines.infra.ray_runtime import apply_ray_env

        apply_ray_env()
        kwargs: dict[str, Any] = {"log_to_driver": True}
        if num_cpus and not os.environ.get("RAY_ADDRESS"):
            kwargs.update(address="local", num_cpus=num_cpus)
        ray.init(**kwargs)


@dataclass
class PreparedRun:
    """A validated run with its storage directory and MLflow run, ready to be trained by `train_runs`."""

    res: Resolved
    rdir: str
    run_id: Optional[str]
    owned: bool  # the MLflow run was created here (not the caller's), so finishing it is ours
    branch_steps: Sequence[int] = ()
    t_start: float = 0.0

    @property
    def result_uri(self) -> str:
        return storage.join(self.rdir, RESULT_NAME)


def prepare_run(cfg: TrainConfig, *, mlflow_run_id: Optional[str] = None, parent_run_id: Optional[str] = None,
                tags: Optional[dict] = None, extra_params: Optional[dict] = None, branch_steps: Sequence[int] = (),
                resolved: Optional[Resolved] = None) -> PreparedRun:
    """Validate (unless `resolved`), create or reattach the MLflow run; no cluster work."""
    res = resolved or validate_config(cfg)
    rdir = run_dir(cfg, res.run_name)
    t_start = time.time()
    run_id, owned = _mlflow_run(res, rdir, mlflow_run_id=mlflow_run_id, parent_run_id=parent_run_id, tags=tags,
                                extra_params=extra_params)
    return PreparedRun(res=res, rdir=rdir, run_id=run_id, owned=owned, branch_steps=tuple(branch_steps),
                       t_start=t_start)


def run_training(cfg: TrainConfig, *, mlflow_run_id: Optional[str] = None, parent_run_id: Optional[str] = None,
                 tags: Optional[dict] = None, extra_params: Optional[dict] = None, callbacks: Optional[list] = None,
                 branch_steps: Sequence[int] = (), evaluate: bool = True, resolved: Optional[Resolved] = None) -> dict:
    """Validate, train on Ray Train, evaluate the budget points; returns a result dict (status, points, ...)."""
    run = prepare_run(cfg, mlflow_run_id=mlflow_run_id, parent_run_id=parent_run_id, tags=tags,
                      extra_params=extra_params, branch_steps=branch_steps, resolved=resolved)
    train_runs([run], callbacks=callbacks)
    return finish_run(run, evaluate=evaluate)


def train_runs(runs: Sequence[PreparedRun], experiment_dir: Optional[str] = None, *,
               callbacks: Optional[list] = None) -> None:
    """Train, in order, every run that has no result yet, in ONE Ray Train run (one worker group).

    `experiment_dir` is the Ray Train run's directory and must contain every run's directory; None for a
    single run, whose own directory it then is. A sweep trial trains all its budgets this way: the worker
    group, its process group and the data set's split start once per trial instead of once per budget.
    Runs must share data and Ray resources.
    """
    if experiment_dir is None:
        if len(runs) != 1:
            raise ValueError("train_runs: several runs need an experiment_dir that contains their directories")
        experiment_dir = runs[0].rdir
    for r in runs:
        if r.rdir != experiment_dir and not r.rdir.startswith(experiment_dir.rstrip("/") + "/"):
            raise ValueError(f"run directory {r.rdir} is not inside the experiment directory {experiment_dir}")
    todo = [r for r in runs if not storage.exists(r.result_uri)]  # done before a driver restart: skip
    if not todo:
        return
    first = todo[0].res.cfg
    for r in todo[1:]:
        c = r.res.cfg
        for key in ("data", "run.num_workers", "run.cpus_per_worker", "run.use_gpu", "run.max_failures",
                    "run.deterministic", "run.log_level", "checkpoint.storage"):
            a, b = _dotted(first, key), _dotted(c, key)
            if a != b:
                raise ConfigError(f"{key}: runs trained together must agree ({r.res.run_name}: {b!r} vs "
                                  f"{todo[0].res.run_name}: {a!r})")
    _fit(todo, experiment_dir, callbacks)
    for r in todo:
        if not storage.exists(r.result_uri):
            raise RuntimeError(f"run {r.res.run_name}: training ended without a result ({r.result_uri})")


def _dotted(cfg: TrainConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return to_dict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def finish_run(run: PreparedRun, *, evaluate: bool = True) -> dict:
    """After training: the run's result, FID at its budget points (cached), points.json, MLflow status."""
    res, cfg = run.res, run.res.cfg
    summary = storage.read_json(run.result_uri)
    summary["run_dir"] = run.rdir
    summary["mlflow_run_id"] = run.run_id
    if summary["status"] != "finished":
        return summary  # the worker already marked the MLflow run FAILED with the reason tag
    points = []
    for step, budget in sorted(res.point_steps.items()):
        ck = storage.join(run.rdir, "checkpoints", f"step_{step:08d}")
        points.append({"budget_flops": budget, "flops": step * cfg.data.batch_size * res.flops["train_flops_per_image"],
                       "step": step, "params": res.flops["params"], "model": model_display_name(cfg.model),
                       "checkpoint": ck, "fid": None, "val_loss": _val_loss_of(ck)})
    if evaluate and cfg.eval.num_samples > 0:
        points = evaluate_points(cfg, points, run.run_id, res.tracking_uri, run.rdir)
    summary["points"] = points
    summary["wall_s"] = time.time() - run.t_start
    storage.write_json(storage.join(run.rdir, "points.json"), points)
    if run.run_id:
        from pipelines.infra.tracking import POINTS_ARTIFACT, get_client

        client = get_client(res.tracking_uri, check=False)
        client.log_text(run.run_id, json.dumps(points, indent=2), POINTS_ARTIFACT)
        if run.owned:
            client.set_terminated(run.run_id, status="FINISHED")
    return summary


def _val_loss_of(ck_uri: str) -> Optional[float]:
    try:
        st = storage.read_json(storage.join(ck_uri, "state.json"))
        return st.get("metrics", {}).get("val_loss")
    except Exception:  # noqa: BLE001
        return None


def evaluate_points(cfg: TrainConfig, points: list[dict], run_id: Optional[str], tracking_uri: Optional[str],
                    rdir: str) -> list[dict]:
    """FID (+ attribute accuracy) of each point's checkpoint, cached in <run dir>/eval/step_X.json; logs to MLflow."""
    from jobs.evaluation.fid import evaluate_checkpoint

    out = []
    client = None
    if run_id:
        from pipelines.infra.tracking import get_client

        client = get_client(tracking_uri, check=False)
    for p in points:
        cache = storage.join(rdir, "eval", f"step_{p['step']:08d}.json")
        if storage.exists(cache):
            ev = storage.read_json(cache)
        else:
            ev = evaluate_checkpoint(p["checkpoint"], cfg.data.manifest, num_samples=cfg.eval.num_samples,
                                     sampler=cfg.eval.sampler, steps=cfg.eval.steps, guidance=cfg.eval.guidance,
                                     seed=cfg.eval.seed, num_actors=cfg.eval.num_actors,
                                     cpus_per_actor=cfg.run.cpus_per_worker)
            storage.write_json(cache, ev)
        p = {**p, "fid": ev["fid"]}
        if ev.get("attr_acc") is not None:
            p["attr_acc"] = ev["attr_acc"]
        if client is not None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            ms = [Metric("fid", float(ev["fid"]), ts, int(p["step"]))]
            if ev.get("attr_acc") is not None:
                ms.append(Metric("attr_acc", float(ev["attr_acc"]), ts, int(p["step"])))
            client.log_batch(run_id, metrics=ms)
        out.append(p)
    return out


def _fit(runs: Sequence[PreparedRun], experiment_dir: str, callbacks: Optional[list]) -> None:
    """One TorchTrainer (run directory `experiment_dir`) that trains `runs` in order; each writes its result.json."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.train.loop import train_loop_per_worker

    cfg = runs[0].res.cfg
    ensure_ray()
    plans = [{**make_plan(r.res, mlflow_run_id=r.run_id, branch_steps=r.branch_steps, rdir=r.rdir),
              "run_subdir": r.rdir[len(experiment_dir):].strip("/")} for r in runs]
    val_ids = plans[0]["val"]["id"] if plans[0].get("val") else None
    ds = _train_dataset(runs[0].res, val_ids)
    root, name = experiment_dir.rstrip("/").rsplit("/", 1)
    fs, fs_path = storage.get_fs(root)
    if not storage.is_s3(root):
        os.makedirs(fs_path, exist_ok=True)
    resources = {"CPU": cfg.run.cpus_per_worker}
    if cfg.run.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"runs": plans},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=fs_path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures), callbacks=callbacks,
                             logging_config=LoggingConfig(log_level=cfg.run.log_level)),
        datasets={"train": ds},
    )
    trainer.fit()


def run_local(cfg: TrainConfig, checkpoint_root: str, *, resolved: Optional[Resolved] = None) -> dict:
    """The same loop in this process on in-memory rows, no Ray (baseline for the bench; reference in tests)."""
    from jobs.train.loop import LocalEnv, run_loop
    from pipelines.latents.reader import load_latents_numpy

    res = resolved or validate_config(cfg, check_mlflow=False)
    plan = make_plan(res)
    plan["mlflow_run_id"] = None
    rows = load_latents_numpy(cfg.data.manifest)
    rows.pop("caption", None)
    if plan.get("val") is not None:
        keep = ~np.isin(rows["id"].astype(str), plan["val"]["id"].astype(str))
        rows = {k: v[keep] for k, v in rows.items()}
    env = LocalEnv(rows=rows, checkpoint_root=checkpoint_root)
    out = run_loop(plan, env)
    out["reports"] = env.reports
    return out


def load_train_config(path: Optional[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML file + k=v overrides -> TrainConfig (errors name the bad key)."""
    from pipelines.infra.config_files import load_config

    return load_config(TrainConfig, path, overrides)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale train`."""
    p = argparse.ArgumentParser(prog="ditscale train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: ditscale train --config configs/train/tiny.yaml budget_flops=2e12 "
                                       "run.num_workers=2")
    p.add_argument("--config", help="YAML TrainConfig (configs/train/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=3e-4")
    p.add_argument("--validate-only", action="store_true", help="check the config against data/MLflow and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = load_train_config(args.config, args.overrides)
        res = validate_config(cfg)
    except ConfigError as e:
        print(f"ditscale train: config error: {e}", file=sys.stderr)
        return 2
    print(f"[ditscale] run {res.run_name}: {model_display_name(cfg.model)} "
          f"({res.flops['params']:,} params, {res.flops['train_flops_per_image']:.3g} train FLOPs/image), "
          f"{res.total_steps} steps to {cfg.budget_flops:.3g} FLOPs")
    if args.validate_only:
        return 0
    out = run_training(cfg, resolved=res)
    print(json.dumps({k: v for k, v in out.items() if k != "metrics"}, indent=2, default=str))
    return 0 if out["status"] == "finished" else 1


if __name__ == "__main__":
    raise SystemExit(main())
