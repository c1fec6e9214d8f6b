"""The run plan: a TrainConfig checked against its data set and tracking store, with everything derived from it.

`resolve_run(cfg)` is the one place a training config is validated (before any cluster work): model vs data set
(latent size / channels, text dims, classes), budget >= one step, budget points, batch split, sampler names, MLflow
reachable. It returns a typed `RunPlan` that the driver, the sweep and every Ray Train worker share;
`attach_worker_data` adds the small arrays workers need (validation rows, the null text embedding).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ditcore.config import ConfigError, to_dict
from ditcore.flops import flops_summary
from ditcore.models import PRESETS, config_to_dict, resolve_config
from jobs.train.config import TrainConfig, lr_factor, model_display_name, run_name
from pipelines.infra import storage
from pipelines.infra.code import training_code_fingerprint
from pipelines.latents.manifest import Manifest


def steps_for_budget(budget_flops: float, train_flops_per_image: float, global_batch: int) -> int:
    """ceil(budget / (train FLOPs per image x global batch)): the number of optimizer steps of a budget."""
    return int(math.ceil(budget_flops / (train_flops_per_image * global_batch) - 1e-9))


@dataclass
class RunPlan:
    """A validated training run: its config, data set, model, compute and budget points, storage and tracking."""

    cfg: TrainConfig
    manifest: Manifest
    model_config: dict[str, Any]
    flops: dict[str, float]  # params, forward/train FLOPs per image (ditcore.flops.flops_summary)
    text_tokens: Optional[int]
    total_steps: int
    point_steps: dict[int, float]  # step -> budget (FLOPs) of each evaluated budget point
    tracking_uri: Optional[str]
    run_name: str
    run_dir: str = ""  # <checkpoint.storage>/<run name> (URI); set by the driver
    run_subdir: str = ""  # run_dir relative to the Ray Train run that trains it
    mlflow_run_id: Optional[str] = None
    mlflow_marker: str = "mlflow_run.json"  # in run_dir: the MLflow run that records this run (tracking.attach_run)
    branch_steps: tuple[int, ...] = ()  # WSD: steps whose checkpoints a decay branch starts from
    init_from_local: Optional[str] = None  # local copy of checkpoint.init_from (set on the worker)
    null_text: Optional[dict[str, np.ndarray]] = None  # the data set's empty-prompt embedding (text models)
    val: Optional[dict[str, np.ndarray]] = None  # validation rows (held out of training)
    params_extra: dict[str, Any] = field(default_factory=dict)
    code: str = ""  # fingerprint of the training code that resolved it (result.json "code"; pipelines/infra/code.py)

    @property
    def train_flops_per_image(self) -> float:
        """Training FLOPs per image (3 x forward, multiply-add = 2 FLOPs)."""
        return float(self.flops["train_flops_per_image"])

    @property
    def params(self) -> int:
        """Parameter count of the model."""
        return int(self.flops["params"])

    @property
    def keep_steps(self) -> set[int]:
        """Steps whose checkpoints are never pruned: budget points, the end, WSD branch points."""
        return set(self.point_steps) | {self.total_steps} | set(self.branch_steps)

    @property
    def branch_only_steps(self) -> set[int]:
        """WSD branch starts that are neither a budget point nor the end: undecayed models no point is read from."""
        return set(self.branch_steps) - set(self.point_steps) - {self.total_steps}

    @property
    def is_text(self) -> bool:
        """Whether the model is text-conditioned."""
        return _is_text(self.model_config)

    @property
    def model_name(self) -> str:
        """Display name of the model."""
        return model_display_name(self.cfg.model)


# Model field -> the manifest field that decides it.
_MANIFEST_KEYS = {
    "input_size": "vae.latent_size",
    "in_channels": "vae.latent_channels",
    "text_dim": "text.dim",
    "pooled_dim": "text.pooled_dim",
    "max_text_len": "text.max_length",
    "num_classes": "num_classes",
}


def _is_text(model_config: dict) -> bool:
    return model_config.get("arch") == "mmdit" or (
        model_config.get("arch") == "unet" and int(model_config.get("text_dim") or 0) > 0
    )


def _data_values(cfg: TrainConfig, manifest: Manifest, base: dict) -> dict[str, Any]:
    """The model fields the data set decides, checked against the model's conditioning."""
    values: dict[str, Any] = {
        "input_size": manifest.vae.latent_size or None,
        "in_channels": manifest.vae.latent_channels,
    }
    name = model_display_name(cfg.model)
    if _is_text(base):
        if manifest.text is None:
            raise ConfigError(
                f"data.manifest {cfg.data.manifest!r} has no text embeddings (manifest 'text' is null) "
                f"but model {name!r} is text-conditional"
            )
        values.update(text_dim=manifest.text.dim, pooled_dim=manifest.text.pooled_dim)
        if manifest.text.max_length:
            values["max_text_len"] = int(manifest.text.max_length)
    else:
        if manifest.num_classes is None:
            raise ConfigError(
                f"data.manifest {cfg.data.manifest!r} has no class labels (num_classes null) but model "
                f"{name!r} is class-conditional"
            )
        values["num_classes"] = manifest.num_classes
    return values


def check_text_dropout(cfg: TrainConfig, manifest: Manifest) -> None:
    """data.text_dropout names encoders of the data set's multi-encoder text record, with rates in [0, 1]."""
    if not cfg.data.text_dropout:
        return
    names = [p.name for p in (manifest.text.encoders or [])] if manifest.text is not None else []
    for name, p in cfg.data.text_dropout.items():
        if name not in names:
            raise ConfigError(
                f"data.text_dropout.{name}: the data set {cfg.data.manifest!r} has no text encoder {name!r} "
                f"(its encoders: {names or 'none: not a multi-encoder set'})"
            )
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"data.text_dropout.{name}: {p} is not in [0, 1]")


def resolve_model_config(cfg: TrainConfig, manifest: Manifest) -> dict[str, Any]:
    """Model config dict from the spec, adapted to / checked against the data set (errors name keys)."""
    spec = cfg.model
    if spec.preset is not None and spec.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {spec.preset!r}; known: {', '.join(PRESETS)}")
    overrides = dict(spec.overrides)
    if cfg.optim.mup:
        overrides["mup"] = True
    try:
        base = config_to_dict(resolve_config(spec.preset)) if spec.preset else dict(overrides)
        if base.get("arch") not in ("dit", "mmdit", "unet"):
            raise ConfigError("model.overrides.arch: must be 'dit', 'mmdit' or 'unet' when model.preset is null")
        data = _data_values(cfg, manifest, {**base, **overrides})
        if spec.adapt_to_data:
            overrides.update({k: v for k, v in data.items() if k not in overrides and v is not None})
        mc = resolve_config(spec.preset, **overrides) if spec.preset else resolve_config(overrides)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from e
    d = config_to_dict(mc)
    for key, value in data.items():  # explicit values that disagree with the data are errors
        if value is None or key == "num_classes" or key not in d:
            continue
        if key == "max_text_len":
            if d[key] < value:
                raise ConfigError(
                    f"model.max_text_len={d[key]} is shorter than the data set's text.max_length="
                    f"{value} (manifest {cfg.data.manifest})"
                )
        elif d[key] != value:
            raise ConfigError(
                f"model.{key}={d[key]} does not match the data set ({_MANIFEST_KEYS[key]}={value} in "
                f"{cfg.data.manifest}/manifest.json)"
            )
    if "num_classes" in data and d.get("num_classes", 0) < int(data["num_classes"]):
        raise ConfigError(
            f"model.num_classes={d['num_classes']} < data set num_classes={data['num_classes']} "
            f"(manifest {cfg.data.manifest})"
        )
    patch = int(getattr(mc, "patch_size", 1))
    if d["input_size"] % patch:
        raise ConfigError(f"model.patch_size={patch} does not divide the latent size {d['input_size']}")
    return d


def check_settings(cfg: TrainConfig) -> None:
    """Checks of the config alone (no data set needed)."""
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: required (the latent dataset directory, local or s3://)")
    for key, uri in (
        ("data.manifest", cfg.data.manifest),
        ("checkpoint.storage", cfg.checkpoint.storage),
        ("checkpoint.init_from", cfg.checkpoint.init_from),
    ):
        if uri:
            storage.check_location(uri, key)
    where = cfg.checkpoint.storage
    if where and not storage.is_s3(where) and os.path.isfile(os.path.expanduser(where)):
        raise ConfigError(f"checkpoint.storage: {where!r} is a file, not a directory")
    name = cfg.run.name
    if name is not None and (name.strip() in ("", ".", "..") or "/" in name or "\\" in name):
        raise ConfigError(f"run.name: {name!r} must be one folder name (the run's directory under checkpoint.storage)")
    _check_numbers(cfg)
    if not isinstance(logging.getLevelName(str(cfg.run.log_level).upper()), int):
        raise ConfigError(f"run.log_level: {cfg.run.log_level!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    if cfg.data.batch_size % cfg.run.num_workers:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is not divisible by run.num_workers={cfg.run.num_workers}"
        )
    if cfg.eval.num_samples > 0:
        from ditcore.samplers import SAMPLERS

        if cfg.eval.sampler not in SAMPLERS:
            raise ConfigError(f"eval.sampler: unknown sampler {cfg.eval.sampler!r}; known: {', '.join(SAMPLERS)}")


def _check_numbers(cfg: TrainConfig) -> None:
    """Numbers a run cannot use: each error names the key and the value (NaN and inf included)."""
    o, e, c, r = cfg.optim, cfg.eval, cfg.checkpoint, cfg.run

    def need(key: str, value: Any, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {value!r}")

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    # the config loader has already refused what is not a number; NaN fails every comparison below
    need("data.batch_size", cfg.data.batch_size, cfg.data.batch_size >= 1, ">= 1")
    need("run.num_workers", r.num_workers, r.num_workers >= 1, ">= 1")
    need("data.shuffle_buffer", cfg.data.shuffle_buffer, cfg.data.shuffle_buffer >= 0, ">= 0 (0: no shuffling)")
    need("data.flip", cfg.data.flip, 0.0 <= cfg.data.flip <= 1.0, "a probability in [0, 1]")
    need("optim.decay_fraction", o.decay_fraction, 0.0 <= o.decay_fraction <= 1.0, "in [0, 1]")
    need("optim.ema_decay", o.ema_decay, 0.0 <= o.ema_decay < 1.0, "in [0, 1)")
    need("budget_flops", cfg.budget_flops, finite(cfg.budget_flops) and cfg.budget_flops > 0, "a finite number > 0")
    for i, b in enumerate(e.budgets):
        need(f"eval.budgets[{i}]", b, finite(b) and b > 0, "a finite number > 0")
    need("optim.lr", o.lr, finite(o.lr) and o.lr > 0, "a finite number > 0")
    need("optim.weight_decay", o.weight_decay, finite(o.weight_decay) and o.weight_decay >= 0, "a finite number >= 0")
    need("optim.eps", o.eps, finite(o.eps) and o.eps > 0, "a finite number > 0")
    need("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, ">= 0")
    need("optim.grad_clip", o.grad_clip, finite(o.grad_clip) and o.grad_clip >= 0, "a finite number >= 0 (0: off)")
    need("optim.min_lr_ratio", o.min_lr_ratio, finite(o.min_lr_ratio) and 0 <= o.min_lr_ratio <= 1, "in [0, 1]")
    for i, b in enumerate(o.betas):
        need(f"optim.betas[{i}]", b, finite(b) and 0 <= b < 1, "in [0, 1)")
    need("eval.num_samples", e.num_samples, e.num_samples >= 0, ">= 0 (0: no FID)")
    if e.num_samples > 0:
        need("eval.num_samples", e.num_samples, e.num_samples >= 3, ">= 3 (a FID and its bootstrap; 0: no FID)")
        need("eval.seed", e.seed, 0 <= e.seed <= 2**32 - 1, "in [0, 2**32 - 1]")
        need("eval.steps", e.steps, e.steps >= 1, ">= 1")
        need("eval.guidance", e.guidance, finite(e.guidance) and e.guidance >= 0, "a finite number >= 0")
        need("eval.num_actors", e.num_actors, e.num_actors >= 0, ">= 0 (0: sample in the trial process)")
    need("eval.val_every", e.val_every, e.val_every >= 0, ">= 0 (0: only at checkpoints)")
    need("checkpoint.every_n_steps", c.every_n_steps, c.every_n_steps >= 0, ">= 0 (0: only at budget points)")
    need("checkpoint.keep", c.keep, c.keep >= 1, ">= 1 (the newest periodic checkpoint is what a restart resumes)")
    need("run.cpus_per_worker", r.cpus_per_worker, finite(r.cpus_per_worker) and r.cpus_per_worker > 0, "> 0")
    need("run.max_failures", r.max_failures, r.max_failures >= -1, ">= 0, or -1 for no limit")
    if r.num_threads is not None:
        need("run.num_threads", r.num_threads, r.num_threads >= 1, ">= 1 (or null: from run.cpus_per_worker)")
    need("data.val_samples", cfg.data.val_samples, cfg.data.val_samples >= 0, ">= 0")
    cd = cfg.data.cond_dropout
    need("data.cond_dropout", cd, cd is None or (finite(cd) and 0 <= cd <= 1), "in [0, 1] (or null: the objective's)")
    pk = r.peak_flops
    need("run.peak_flops", pk, pk is None or (finite(pk) and pk > 0), "a finite FLOP/s > 0 (or null: measured)")
    if e.num_gpus is not None:
        need("eval.num_gpus", e.num_gpus, finite(e.num_gpus) and e.num_gpus >= 0, "a finite number >= 0 (or null)")
    need("mlflow.log_every", cfg.mlflow.log_every, cfg.mlflow.log_every >= 1, ">= 1")


def check_big_model(cfg: TrainConfig, model_config: dict[str, Any]) -> None:
    """The big-model levers (run.grad_accum, activation_checkpointing, fsdp_mixed_precision, meta_init) fit the run."""
    r = cfg.run
    if r.grad_accum < 1:
        raise ConfigError(f"run.grad_accum must be >= 1, got {r.grad_accum}")
    if cfg.data.batch_size % (r.num_workers * r.grad_accum):
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is not divisible by run.num_workers x run.grad_accum "
            f"= {r.num_workers} x {r.grad_accum}: every micro-batch must hold the same number of rows"
        )
    if r.activation_checkpointing and model_config.get("arch") == "unet":
        raise ConfigError("run.activation_checkpointing: supported for DiT and MM-DiT blocks, not the U-Net")
    if r.fsdp_mixed_precision != "none" and not r.fsdp:
        raise ConfigError(
            f"run.fsdp_mixed_precision={r.fsdp_mixed_precision!r} needs run.fsdp=true (without FSDP2 use run.bf16)"
        )
    if r.meta_init and not r.fsdp:
        raise ConfigError("run.meta_init=true needs run.fsdp=true (an unsharded model is whole on every rank anyway)")


def budget_points(cfg: TrainConfig, fpi: float) -> tuple[int, dict[int, float]]:
    """(total steps, {step: budget}) of the run's end, eval.budgets and eval.fractions (each >= one step)."""
    batch = cfg.data.batch_size
    one_step = fpi * batch
    if cfg.budget_flops < one_step:
        raise ConfigError(
            f"budget_flops={cfg.budget_flops:.4g} is smaller than one training step: {one_step:.4g} "
            f"FLOPs (train_flops_per_image {fpi:.4g} x batch {batch}); raise the budget or lower "
            "data.batch_size"
        )
    total = steps_for_budget(cfg.budget_flops, fpi, batch)
    points = {total: float(cfg.budget_flops)}
    named = {total: f"budget_flops={cfg.budget_flops:.4g}"}
    for b in cfg.eval.budgets:
        if b > cfg.budget_flops * (1 + 1e-9):
            raise ConfigError(f"eval.budgets: {b:.4g} exceeds budget_flops={cfg.budget_flops:.4g}")
        if b < one_step:
            raise ConfigError(f"eval.budgets: {b:.4g} is smaller than one training step ({one_step:.4g} FLOPs)")
        at = steps_for_budget(b, fpi, batch)
        if at in points and abs(points[at] - b) <= 1e-9 * b:
            continue  # the same budget listed again (or the run's own): one point
        if at in named:  # one step count cannot stand for two budgets: the point would be filed under one of them
            raise ConfigError(
                f"eval.budgets: {b:.4g} rounds to step {at}, the step of {named[at]} too (one step is "
                f"{one_step:.4g} FLOPs); drop one of them or space them at least one step apart"
            )
        named[at] = f"eval.budgets entry {b:.4g}"
        points[at] = float(b)
    for i, fr in enumerate(cfg.eval.fractions):
        if not 0.0 < fr < 1.0:
            raise ConfigError(f"eval.fractions[{i}]: {fr} must be strictly between 0 and 1")
        if fr * cfg.budget_flops < one_step:
            raise ConfigError(
                f"eval.fractions[{i}]: {fr} x budget_flops = {fr * cfg.budget_flops:.4g} FLOPs is less "
                f"than one training step ({one_step:.4g} FLOPs)"
            )
        points.setdefault(steps_for_budget(fr * cfg.budget_flops, fpi, batch), float(fr * cfg.budget_flops))
    return total, points


def _tracking(cfg: TrainConfig, check: bool) -> Optional[str]:
    if not cfg.mlflow.enabled:
        return None
    from pipelines.infra.tracking import TrackingURIError, check_tracking_uri, resolve_tracking_uri

    if not check:
        return resolve_tracking_uri(cfg.mlflow.tracking_uri)
    try:
        return check_tracking_uri(cfg.mlflow.tracking_uri)
    except TrackingURIError as e:
        raise ConfigError(f"mlflow.tracking_uri: {e}") from e


def resolve_run(cfg: TrainConfig, *, check_mlflow: bool = True, manifest: Optional[Manifest] = None) -> RunPlan:
    """Validate `cfg` against its data set (and MLflow) and derive the run plan; ConfigError names any problem."""
    check_settings(cfg)
    if manifest is None:
        try:
            manifest = Manifest.read(cfg.data.manifest)
        except Exception as e:  # noqa: BLE001 - any reader failure is a config problem naming the file
            raise ConfigError(f"data.manifest: cannot read {cfg.data.manifest!r}: {e}") from e
    check_rows(cfg, manifest)
    check_evaluation(cfg, manifest)
    model_config = resolve_model_config(cfg, manifest)
    check_text_dropout(cfg, manifest)
    check_big_model(cfg, model_config)
    text_tokens = (
        int(manifest.text.max_length)
        if (_is_text(model_config) and manifest.text is not None and manifest.text.max_length)
        else None
    )
    flops = flops_summary(model_config, text_tokens)
    total, points = budget_points(cfg, float(flops["train_flops_per_image"]))
    peak = max(lr_factor(step, total, cfg.optim) for step in range(total)) if cfg.optim.warmup_steps >= total else 1.0
    if peak < 1.0:
        warnings.warn(
            f"optim.warmup_steps={cfg.optim.warmup_steps} is not below the run's {total} steps: the learning rate "
            f"peaks at {peak:.0%} of optim.lr={cfg.optim.lr:g}",
            stacklevel=2,
        )
    return RunPlan(
        cfg=cfg,
        manifest=manifest,
        model_config=model_config,
        flops=dict(flops),
        text_tokens=text_tokens,
        total_steps=total,
        point_steps=points,
        tracking_uri=_tracking(cfg, check_mlflow),
        run_name=run_name(cfg),
        code=training_code_fingerprint(),
    )


def check_evaluation(cfg: TrainConfig, manifest: Manifest) -> None:
    """What FID at the budget points needs from the data set, checked before training (it used to fail only after
    the whole run): the set's FID feature net, and a local eval.classifier that exists."""
    if cfg.eval.num_samples <= 0:
        return
    if manifest.fid is None or not manifest.fid.feature_net:
        raise ConfigError(
            f"eval.num_samples={cfg.eval.num_samples}: data.manifest {cfg.data.manifest!r} records no FID feature net "
            "(manifest fid.feature_net; precompute it with fid: set), so there is nothing to score; set "
            "eval.num_samples=0 to train without FID"
        )
    c = cfg.eval.classifier
    if c and "://" not in c and not Path(c).expanduser().is_dir():
        raise ConfigError(f"eval.classifier: {c!r} is not a directory (a `ditscale data classifier` output)")


def check_rows(cfg: TrainConfig, manifest: Manifest) -> None:
    """The data set must hold the validation rows plus at least one batch (checked here, before any cluster work)."""
    rows, val, batch = int(manifest.counts.written), cfg.data.val_samples, cfg.data.batch_size
    if rows <= 0:
        raise ConfigError(f"data.manifest: {cfg.data.manifest} holds no rows (counts: {to_dict(manifest.counts)})")
    if val >= rows:
        raise ConfigError(f"data.val_samples: {val} rows held out for validation leave none of the {rows} to train on")
    if batch > rows - val:
        raise ConfigError(
            f"data.batch_size: {batch} is more than the {rows - val} training rows ({rows} in the data set, "
            f"{val} held out by data.val_samples)"
        )


def attach_worker_data(plan: RunPlan) -> None:
    """Load what every worker needs from the data set (validation rows, null text embedding) into the plan."""
    from pipelines.latents.reader import load_latents_numpy, load_null_text

    cfg = plan.cfg
    if plan.is_text and plan.null_text is None:
        nt = load_null_text(cfg.data.manifest)
        plan.null_text = (
            {k: np.asarray(v.float().numpy() if v.is_floating_point() else v.numpy()) for k, v in nt.items()}
            if nt
            else None
        )
    if cfg.data.val_samples > 0 and plan.val is None:
        val = load_latents_numpy(cfg.data.manifest, limit=cfg.data.val_samples)
        sided = sided_caption(val.pop("caption", None)) if plan.is_text else None
        if sided is not None and cfg.data.flip > 0:
            warnings.warn(
                f"data.flip={cfg.data.flip:g} mirrors images whose captions name a side (e.g. {sided!r}): a mirrored "
                "image contradicts its caption; set data.flip=0 for such data",
                stacklevel=2,
            )
        plan.val = val


_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def sided_caption(captions: Any) -> str | None:
    """The first caption that names a side (left / right), which a horizontal flip would contradict; else None."""
    for caption in [] if captions is None else captions:
        if isinstance(caption, str) and _SIDE_WORDS.search(caption):
            return caption
    return None
