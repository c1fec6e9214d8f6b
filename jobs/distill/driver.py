"""Driving a guidance distillation: plan from the teacher's run, train on Ray Train, record beside the teacher.

The student's run is a training run (jobs.train.driver: storage directory, MLflow run, one TorchTrainer, result
record) whose plan is derived from the teacher checkpoint's `train` config: same data set, objective and model
with `guidance_embed=true`, the distillation's steps, batch and learning rate. Its MLflow run is nested under the
teacher's run (the run id recorded in the teacher's run directory, `mlflow_run.json`), in the same experiment.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from ditcore.config import ConfigError, from_dict, merge, to_dict
from ditcore.guidance_distill import GuidanceRange, student_model_config
from jobs.distill.config import DistillConfig
from jobs.train.config import TrainConfig
from jobs.train.plan import RunPlan, resolve_run
from pipelines.infra import storage

DISTILL_ROLE = "distill"


def teacher_run_dir(teacher: str) -> str:
    """<run dir> of a checkpoint <run dir>/checkpoints/step_X."""
    parts = teacher.rstrip("/").rsplit("/", 2)
    if len(parts) < 3 or parts[1] != "checkpoints":
        raise ConfigError(f"teacher: {teacher!r} is not a checkpoint directory <run>/checkpoints/step_XXXXXXXX")
    return parts[0]


def _teacher_config(teacher: str) -> dict:
    from ditcore.checkpoint import CheckpointError

    try:
        cfg = storage.checkpoint_config(teacher)
    except (CheckpointError, FileNotFoundError, OSError) as e:
        raise ConfigError(f"teacher: cannot read checkpoint {teacher!r}: {e}") from e
    weights = ("ema.safetensors", "model.safetensors")
    if not any(storage.exists(storage.join(teacher, w)) for w in weights):  # a sharded run's intermediate step
        raise ConfigError(
            f"teacher: {teacher!r} holds no whole weights ({' or '.join(weights)}); a sharded run writes them only at "
            "its kept steps: pick one of those"
        )
    if "train" not in cfg:
        raise ConfigError(f"teacher: {teacher}/config.json has no 'train' config (not written by ditscale train)")
    try:
        student_model_config(cfg["model"])
    except ValueError as e:
        raise ConfigError(f"teacher: {e}") from e
    return cfg


def _check(cfg: DistillConfig) -> None:
    if not cfg.teacher:
        raise ConfigError("teacher: required (the teacher checkpoint directory)")
    teacher_run_dir(cfg.teacher)  # a <run>/checkpoints/step_X path: the student's run goes beside the teacher's
    try:
        GuidanceRange(cfg.w_min, cfg.w_max)
    except ValueError as e:
        raise ConfigError(f"w_min/w_max: {e}") from e
    for key in ("steps", "batch_size", "num_workers"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")


# The student's TrainConfig keys that a distill key sets (student_train_config): errors name the distill key.
_DISTILL_KEYS = {
    "optim.lr": "lr",
    "optim.warmup_steps": "warmup_steps",
    "optim.ema_decay": "ema_decay",
    "data.batch_size": "batch_size",
    "data.val_samples": "val_samples",
    "run.num_workers": "num_workers",
    "run.cpus_per_worker": "cpus_per_worker",
    "run.seed": "seed",
    "run.name": "name",
    "checkpoint.storage": "storage",
    "run.shared_filesystem": "shared_filesystem",
    "mlflow.log_every": "log_every",
    "mlflow.tracking_uri": "tracking_uri",
}


def _teacher_shared(teacher_train: dict) -> bool:
    """The teacher's run said its local checkpoint storage is mounted on every node (run.shared_filesystem)."""
    return bool((teacher_train.get("run") or {}).get("shared_filesystem"))


def _in_distill_words(msg: str) -> str:
    """A training error in distill's own words: `cpus_per_worker`, not the student's `run.cpus_per_worker`."""
    for train_key, key in sorted(_DISTILL_KEYS.items(), key=lambda kv: -len(kv[0])):
        msg = re.sub(rf"(?<![\w.]){re.escape(train_key)}(?![\w])", key, msg)
    return msg


def student_train_config(cfg: DistillConfig, teacher_cfg: dict) -> TrainConfig:
    """The student's TrainConfig: the teacher's, with guidance_embed and the distillation's schedule."""
    teacher = cfg.teacher.rstrip("/")
    base = teacher_cfg["train"]
    tname = teacher_cfg.get("run_name") or teacher_run_dir(teacher).rsplit("/", 1)[-1]
    overrides = {
        "model.overrides.guidance_embed": True,
        "model.name": f"{(base.get('model') or {}).get('preset') or tname}-distilled",
        "budget_flops": 1e30,  # replaced by the step count below
        "optim.lr": cfg.lr,
        "optim.schedule": "constant",
        "optim.warmup_steps": cfg.warmup_steps,
        "optim.ema_decay": cfg.ema_decay,
        "data.batch_size": cfg.batch_size,
        "data.val_samples": cfg.val_samples,
        "eval.num_samples": 0,
        "eval.budgets": [],
        "eval.fractions": [],
        "checkpoint.storage": cfg.storage or storage.join(teacher_run_dir(teacher), "distill"),
        "checkpoint.init_from": None,
        "checkpoint.every_n_steps": 0,
        "run.num_workers": cfg.num_workers,
        "run.cpus_per_worker": cfg.cpus_per_worker,
        "run.use_gpu": cfg.use_gpu,
        "run.bf16": cfg.bf16,
        "run.seed": cfg.seed,
        # this command says the storage is shared, or the teacher's run said so of the filesystem the default
        # storage (beside the teacher's run) is on
        "run.shared_filesystem": bool(cfg.shared_filesystem or (cfg.storage is None and _teacher_shared(base))),
        "run.fsdp": False,  # the student is small next to its teacher: DDP; so none of FSDP's settings either
        "run.meta_init": False,
        "run.fsdp_mixed_precision": "none",
        "run.grad_accum": 1,
        "run.name": cfg.name or f"{tname}-{teacher.rsplit('/', 1)[-1]}-distill-w{cfg.w_min:g}-{cfg.w_max:g}",
        "mlflow.enabled": cfg.mlflow,
        "mlflow.log_every": cfg.log_every,
    }
    if cfg.tracking_uri is not None or not (base.get("mlflow") or {}).get("enabled", False):
        overrides["mlflow.tracking_uri"] = cfg.tracking_uri
    update: dict = {}
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = update
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return from_dict(TrainConfig, merge(to_dict(from_dict(TrainConfig, base, where="teacher.train")), update))


def distill_plan(cfg: DistillConfig) -> RunPlan:
    """Validate the distillation against the teacher and its data set; the student's run plan."""
    _check(cfg)
    teacher_cfg = _teacher_config(cfg.teacher)
    try:
        plan = resolve_run(student_train_config(cfg, teacher_cfg))
    except ConfigError as e:
        raise ConfigError(_in_distill_words(str(e))) from None
    expected = student_model_config(teacher_cfg["model"])
    if plan.model_config != expected:
        diff = sorted(k for k in set(expected) | set(plan.model_config) if expected.get(k) != plan.model_config.get(k))
        raise ConfigError(f"teacher: the student's model config differs from the teacher's in {diff}")
    # Each image costs the student's training step and the teacher's two forward passes (its conditional and
    # unconditional predictions, combined at w): budget, FLOPs and MFU count both.
    from ditcore.flops import flops_summary

    teacher_forward = float(flops_summary(teacher_cfg["model"], plan.text_tokens)["forward_flops"])
    plan.flops = {
        **plan.flops,
        "student_train_flops_per_image": plan.flops["train_flops_per_image"],
        "teacher_forward_flops": teacher_forward,
        "train_flops_per_image": plan.flops["train_flops_per_image"] + 2 * teacher_forward,
    }
    plan.total_steps = cfg.steps
    plan.point_steps = {cfg.steps: float(cfg.steps * cfg.batch_size * plan.train_flops_per_image)}
    plan.params_extra = {"teacher": cfg.teacher, "w_min": cfg.w_min, "w_max": cfg.w_max, "role": DISTILL_ROLE}
    return plan


def teacher_mlflow_run(teacher: str) -> Optional[dict]:
    """{"run_id", "tracking_uri"} recorded in the teacher's run directory (mlflow_run.json), or None."""
    marker = storage.join(teacher_run_dir(teacher.rstrip("/")), "mlflow_run.json")
    return storage.read_json(marker) if storage.exists(marker) else None


# distill.json keys that decide the student's weights beyond its TrainConfig (whose own are checked by
# jobs.train.driver.check_same_run): a rerun into the same run directory must repeat them.
_DISTILL_IDENTITY = ("teacher", "steps", "w_min", "w_max")


def check_same_distillation(cfg: DistillConfig, run_dir: str) -> None:
    """ConfigError when `run_dir` holds a distillation of another teacher, step count or guidance range: its
    result would otherwise be returned as this one's (the run is done)."""
    uri = storage.join(run_dir, "distill.json")
    if not storage.exists(uri):
        return
    was = storage.read_json(uri)
    now = to_dict(cfg)
    diff = [f"{k}: {was.get(k)!r} -> {now[k]!r}" for k in _DISTILL_IDENTITY if k in was and was[k] != now[k]]
    if diff:
        raise ConfigError(
            f"the distillation at {run_dir} was run with other settings ({'; '.join(diff)}); give this one "
            f"another name, or delete that directory"
        )


def run_distill(cfg: DistillConfig, *, plan: Optional[RunPlan] = None) -> dict[str, Any]:
    """Plan, train the student on Ray Train (DDP over cfg.num_workers), record it; the run's summary."""
    from jobs.cluster.shared_storage import check_run_storage, check_shared_storage
    from jobs.distill.loop import DistillTrainer
    from jobs.train.driver import prepare_run, run_dir, train_prepared
    from pipelines.infra import tracking

    plan = plan or distill_plan(cfg)
    check_same_distillation(cfg, plan.run_dir or run_dir(plan.cfg, plan.run_name))
    try:  # before anything is written: a local path on a multi-node cluster is refused
        check_run_storage(plan.cfg)
        # every Ray Train worker loads the teacher itself
        check_shared_storage(
            cfg.teacher,
            key="teacher",
            override="shared_filesystem",
            shared_filesystem=bool(cfg.shared_filesystem or _teacher_shared(_teacher_config(cfg.teacher)["train"])),
            readers="the training workers that load the teacher",
        )
    except ConfigError as e:
        raise ConfigError(_in_distill_words(str(e))) from None
    parent = teacher_mlflow_run(cfg.teacher) if plan.tracking_uri else None
    parent_id = None
    if parent and parent.get("tracking_uri", plan.tracking_uri) == plan.tracking_uri:
        parent_id = parent.get("run_id") or parent.get("parent_run_id")
        exp = tracking.client(plan.tracking_uri, check=False).get_run(parent_id).info.experiment_id
        name = tracking.client(plan.tracking_uri, check=False).get_experiment(exp).name
        plan.cfg = dataclasses.replace(plan.cfg, mlflow=dataclasses.replace(plan.cfg.mlflow, experiment=name))
    tags = {tracking.ROLE_TAG: DISTILL_ROLE, "ditscale.teacher": cfg.teacher}
    run = prepare_run(plan, parent_run_id=parent_id, tags=tags)
    storage.write_json(storage.join(plan.run_dir, "distill.json"), {**to_dict(cfg), "parent_run_id": parent_id})
    out = train_prepared(run, evaluate=False, trainer=DistillTrainer)
    out["parent_run_id"] = parent_id
    return out
