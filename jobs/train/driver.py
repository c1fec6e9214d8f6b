"""Driving training runs on Ray Train: prepare (storage + MLflow run), train (one TorchTrainer), finish (points).

`run_training(cfg)` validates the whole config against the data set and the MLflow store BEFORE any cluster work
(jobs.train.plan.resolve_run), trains on `run.num_workers` workers (DDP, or FSDP2) recovering from worker failures
from the latest checkpoint (FailureConfig.max_failures), then measures FID at every budget point
(jobs.evaluation). A restarted driver with the same config resumes the same run: same storage directory and run
name, from the run's newest complete checkpoint on storage; the MLflow run id is kept next to the checkpoints. A
different config under the same run name is refused (`RUN_CONFIG`), and a run whose training raised is FAILED in
MLflow with the reason, then retried by the next invocation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ditcore.config import ConfigError, differences, to_dict
from jobs.cluster.shared_storage import check_run_storage
from jobs.scaling.points import ScalingPoint
from jobs.train.checkpointing import UNRECORDED
from jobs.train.config import TrainConfig
from jobs.train.env import RESULT_NAME
from jobs.train.plan import RunPlan, attach_worker_data, resolve_run
from pipelines.infra import storage
from pipelines.infra.code import env_tags, software_besides, software_words


def storage_root(uri: str) -> str:
    """A storage URI as stored: s3:// unchanged, local paths absolute."""
    return uri if storage.is_s3(uri) else os.path.abspath(os.path.expanduser(uri))


def run_dir(cfg: TrainConfig, name: str) -> str:
    """URI of the run's directory (<checkpoint.storage>/<run name>)."""
    return storage.join(storage_root(cfg.checkpoint.storage), name)


@dataclass
class PreparedRun:
    """A run plan with its storage directory and MLflow run, ready to be trained by `train_runs`."""

    plan: RunPlan
    owned: bool = False  # the MLflow run was created here (not the caller's), so finishing it is ours
    t_start: float = 0.0

    @property
    def result_uri(self) -> str:
        """<run dir>/result.json."""
        return storage.join(self.plan.run_dir, RESULT_NAME)


def run_params(plan: RunPlan) -> dict[str, Any]:
    """The MLflow params of a training run."""
    cfg = plan.cfg
    o = cfg.optim
    return {
        "model": plan.model_name,
        "params": plan.params,
        "train_flops_per_image": plan.train_flops_per_image,
        "budget_flops": cfg.budget_flops,
        "budgets": json.dumps(sorted(plan.point_steps.values())),
        "steps": plan.total_steps,
        "lr": o.lr,
        "batch_size": cfg.data.batch_size,
        "schedule": o.schedule,
        "warmup_steps": o.warmup_steps,
        "weight_decay": o.weight_decay,
        "ema_decay": o.ema_decay,
        "grad_clip": o.grad_clip,
        "mup": o.mup,
        "data_manifest": cfg.data.manifest,
        "num_workers": cfg.run.num_workers,
        "objective": json.dumps(to_dict(cfg.objective)),
        "model_config": json.dumps(plan.model_config),
        "checkpoint_dir": storage.join(plan.run_dir, "checkpoints"),
        **plan.params_extra,
    }


RUN_CONFIG = "run_config.json"  # beside the checkpoints: the settings that decide the run's weights
# Ray Train's record of the checkpoints it was told about; resuming reads the run's own newest complete checkpoint
# (jobs.train.env), and this list names periodic checkpoints that `checkpoint.keep` has pruned since.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that decide a run's weights: a rerun under the same run name must repeat them. Evaluation,
    tracking, checkpoint cadence and the execution layout may change between invocations."""
    return {
        "model": to_dict(cfg.model),
        "objective": to_dict(cfg.objective),
        "data": to_dict(cfg.data),
        "optim": to_dict(cfg.optim),
        "budget_flops": cfg.budget_flops,
        "seed": cfg.run.seed,
        "deterministic": cfg.run.deterministic,
        "init_from": cfg.checkpoint.init_from,
    }


def check_same_run(plan: RunPlan) -> None:
    """ConfigError when the run directory holds a run of other settings (`run_identity`); records them otherwise."""
    uri = storage.join(plan.run_dir, RUN_CONFIG)
    now = json.loads(json.dumps(run_identity(plan.cfg), default=str))
    if storage.exists(uri):
        diff = differences(storage.read_json(uri), now)
        if diff:
            shown = "; ".join(diff[:5])
            raise ConfigError(
                f"run {plan.run_name!r} at {plan.run_dir} was trained with other settings ({shown}"
                f"{'; ...' if len(diff) > 5 else ''}); give this config another run.name, or delete that directory"
            )
        return
    storage.write_json(uri, now)


def failure_reason(exc: BaseException) -> str:
    """One line for a run's failure: the exception type and the last line of its message (for a Ray error, the
    worker's own exception)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:1000]


def trained(run_dir_uri: str) -> bool:
    """The run in this directory finished training (its result.json says so)."""
    uri = storage.join(run_dir_uri, RESULT_NAME)
    return storage.exists(uri) and storage.read_json(uri).get("status") == "finished"


def trained_by_other_code(plan: RunPlan) -> list[str]:
    """The fingerprints of the other code that trained part or all of this finished run (`codes_besides`)."""
    return codes_besides(finished_result(plan), plan.code)


def codes_besides(result: dict, code: str) -> list[str]:
    """The fingerprints in a finished run's `result` (result.json) other than `code`: a run resumed or a WSD branch
    started under changed code counts too (`codes`). Runs are matched by their settings, so such a run is reused as
    it is. [] for an unfinished run ({}); [UNRECORDED] for one recorded before result.json had fingerprints (its code
    is unknown, so never taken for this code's)."""
    if not code or not result:
        return []
    return [c for c in result.get("codes") or [result.get("code") or UNRECORDED] if c and c != code]


def trained_on_other_software(plan: RunPlan) -> dict[str, str]:
    """The Python, torch and numpy versions other than this process's that trained part or all of this finished run
    (`software_besides`: a run resumed, or a WSD branch started, from a checkpoint another torch wrote counts too):
    name -> the recorded versions. {} for an unfinished run or one recorded without them."""
    return software_besides(finished_result(plan))


def finished_result(plan: RunPlan) -> dict:
    """The run's result.json when it says finished, else {}."""
    uri = storage.join(plan.run_dir, RESULT_NAME)
    if not storage.exists(uri):
        return {}
    result = storage.read_json(uri)
    return result if result.get("status") == "finished" else {}


def clear_failed(runs: Sequence["PreparedRun"]) -> None:
    """A rerun of a failed run trains it again (from its last good checkpoint): its failed result is removed."""
    for r in runs:
        if storage.exists(r.result_uri) and storage.read_json(r.result_uri).get("status") != "finished":
            storage.delete(r.result_uri)


def abandon_runs(runs: Sequence["PreparedRun"], reason: str) -> list[dict]:
    """Training raised: every unfinished run is FAILED in MLflow (those this driver owns) with `reason`; their
    summaries."""

    out = []
    for r in runs:
        if trained(r.plan.run_dir):
            out.append(finish_run(r))
            continue
        out.append(fail_run(r, reason))
    return out


def fail_run(r: "PreparedRun", reason: str) -> dict:
    """Mark one run FAILED in MLflow (when this driver owns it) with `reason`; its summary, keeping what its
    result.json recorded (a run that trained but could not be evaluated keeps its training FLOPs)."""
    from pipelines.infra import tracking

    if r.owned and r.plan.mlflow_run_id:
        tracking.end_run(tracking.client(r.plan.tracking_uri, check=False), r.plan.mlflow_run_id, "failed", reason)
    done = storage.read_json(r.result_uri) if storage.exists(r.result_uri) else {}
    return {
        **done,
        "run_name": r.plan.run_name,
        "run_dir": r.plan.run_dir,
        "mlflow_run_id": r.plan.mlflow_run_id,
        "status": "failed",
        "reason": reason,
        "points": [],
    }


def _attach_mlflow(plan: RunPlan, parent_run_id: Optional[str], tags: Optional[dict]) -> bool:
    """Set plan.mlflow_run_id (the caller's, the run recorded beside the checkpoints, or a new one); True if ours."""
    from pipelines.infra import tracking

    if plan.tracking_uri is None:
        return False
    client = tracking.client(plan.tracking_uri, check=False)
    owned = plan.mlflow_run_id is None
    if owned:
        try:
            plan.mlflow_run_id, _ = tracking.attach_run(
                client,
                storage.join(plan.run_dir, plan.mlflow_marker),
                experiment=plan.cfg.mlflow.experiment,
                name=plan.run_name,
                tags={tracking.ROLE_TAG: tracking.ROLE_TRAIN, **(tags or {})},
                parent_run_id=parent_run_id,
            )
        except tracking.ExperimentRecordError as e:  # the run's record is in another experiment
            raise ConfigError(f"mlflow.experiment: {e}") from e
    tracking.log_params_once(client, plan.mlflow_run_id, run_params(plan))
    client.log_text(plan.mlflow_run_id, json.dumps(to_dict(plan.cfg), indent=2), "config/train.json")
    return owned


def prepare_run(plan: RunPlan, *, parent_run_id: Optional[str] = None, tags: Optional[dict] = None) -> PreparedRun:
    """Give a validated plan its storage directory and MLflow run; no cluster work."""
    if not plan.run_dir:
        plan.run_dir = run_dir(plan.cfg, plan.run_name)
    check_same_run(plan)  # before the MLflow run is touched
    t_start = time.time()
    owned = _attach_mlflow(plan, parent_run_id, tags)
    return PreparedRun(plan=plan, owned=owned, t_start=t_start)


_SHARED_KEYS = (
    "data",
    "run.num_workers",
    "run.cpus_per_worker",
    "run.use_gpu",
    "run.max_failures",
    "run.deterministic",
    "run.log_level",
    "checkpoint.storage",
)


def _dotted(cfg: TrainConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return to_dict(obj) if dataclasses.is_dataclass(obj) else obj


def train_runs(
    runs: Sequence[PreparedRun],
    experiment_dir: Optional[str] = None,
    *,
    callbacks: Optional[list] = None,
    trainer: Optional[type] = None,
) -> None:
    """Train, in order, every run that has no result yet, in ONE Ray Train run (one worker group).

    `experiment_dir` is the Ray Train run's directory and must contain every run's directory; None for a single
    run, whose own directory it then is. A sweep trial trains all its budgets this way: the worker group, its
    process group and the data set's split start once per trial instead of once per budget.
    """
    experiment_dir = experiment_dir or (runs[0].plan.run_dir if len(runs) == 1 else None)
    if experiment_dir is None:
        raise ValueError("train_runs: several runs need an experiment_dir that contains their directories")
    for r in runs:
        d = r.plan.run_dir
        if d != experiment_dir and not d.startswith(experiment_dir.rstrip("/") + "/"):
            raise ValueError(f"run directory {d} is not inside the experiment directory {experiment_dir}")
    todo = [r for r in runs if not storage.exists(r.result_uri)]  # done before a driver restart: skip
    if not todo:
        return
    first = todo[0].plan
    for r in todo[1:]:
        for key in _SHARED_KEYS:
            a, b = _dotted(first.cfg, key), _dotted(r.plan.cfg, key)
            if a != b:
                raise ConfigError(
                    f"{key}: runs trained together must agree ({r.plan.run_name}: {b!r} vs {first.run_name}: {a!r})"
                )
    _torch_trainer(todo, experiment_dir, callbacks, trainer)
    for r in todo:
        if not storage.exists(r.result_uri):
            raise RuntimeError(f"run {r.plan.run_name}: training ended without a result ({r.result_uri})")


def _torch_trainer(
    runs: Sequence[PreparedRun], experiment_dir: str, callbacks: Optional[list], trainer: Optional[type] = None
) -> None:
    """One TorchTrainer (run directory `experiment_dir`) that trains `runs` in order; each writes result.json.
    `trainer`: a jobs.train.loop.Trainer subclass to run instead (guidance distillation, jobs/distill)."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.train.data import driver_rows, loader_kind, train_dataset
    from jobs.train.loop import train_loop_per_worker
    from pipelines.infra.ray_runtime import init_ray

    cfg = runs[0].plan.cfg
    init_ray()
    plans = []
    for r in runs:
        attach_worker_data(r.plan)
        plans.append(dataclasses.replace(r.plan, run_subdir=r.plan.run_dir[len(experiment_dir) :].strip("/")))
    val_ids = plans[0].val["id"] if plans[0].val is not None else None
    root, name = experiment_dir.rstrip("/").rsplit("/", 1)
    fs, fs_path = storage.get_fs(root)
    if not storage.is_s3(root):
        os.makedirs(fs_path, exist_ok=True)
    if storage.exists(storage.join(experiment_dir, RAY_SNAPSHOT)):
        storage.delete(storage.join(experiment_dir, RAY_SNAPSHOT))
    resources = {"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if cfg.run.use_gpu else {})}
    loop_config: dict[str, Any] = {"runs": plans, **({"trainer": trainer} if trainer is not None else {})}
    loop_config["fit_id"] = uuid.uuid4().hex  # one per fit, kept by the worker groups that replace failed ones
    datasets = {}
    if loader_kind(plans[0]) == "driver":
        import ray

        # Small sets: read here once, put in the object store; every worker maps the arrays and draws its batches
        # in-process (jobs.train.data.epoch_batches). This reference keeps them alive until fit() returns.
        loop_config["rows"] = ray.put(driver_rows(plans[0], val_ids))
    else:
        datasets["train"] = train_dataset(plans[0], val_ids)
    TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=fs_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level=cfg.run.log_level),
        ),
        datasets=datasets,
    ).fit()


def _val_loss_of(ck_uri: str) -> Optional[float]:
    try:
        return storage.read_json(storage.join(ck_uri, "state.json")).get("metrics", {}).get("val_loss")
    except Exception:  # noqa: BLE001 - a checkpoint without state metrics simply has no val loss
        return None


def budget_point_records(plan: RunPlan) -> list[ScalingPoint]:
    """The run's budget points (before evaluation): checkpoint, compute, images seen, validation loss."""
    batch, fpi = plan.cfg.data.batch_size, plan.train_flops_per_image
    out = []
    for step, budget in sorted(plan.point_steps.items()):
        ck = storage.join(plan.run_dir, "checkpoints", f"step_{step:08d}")
        out.append(
            ScalingPoint(
                model=plan.model_name,
                params=plan.params,
                budget_flops=budget,
                flops=step * batch * fpi,
                step=step,
                checkpoint=ck,
                images_seen=step * batch,
                val_loss=_val_loss_of(ck),
                run=plan.run_name,
            )
        )
    return out


def finish_run(run: PreparedRun, *, evaluate: bool = True) -> dict:
    """After training: the run's result, FID at its budget points (cached), points.json, MLflow status."""
    plan = run.plan
    summary = storage.read_json(run.result_uri)
    summary.update(run_dir=plan.run_dir, mlflow_run_id=plan.mlflow_run_id)
    if plan.mlflow_run_id and summary.get("env"):  # where the worker that wrote it ran (a sweep trial's run too)
        from pipelines.infra import tracking

        client = tracking.client(plan.tracking_uri, check=False)
        tracking.set_tags(client, plan.mlflow_run_id, env_tags(summary["env"]))
    if summary["status"] != "finished":
        if run.owned and plan.mlflow_run_id:  # the worker marked it FAILED; a rerun's attach set it RUNNING again
            from pipelines.infra import tracking

            client = tracking.client(plan.tracking_uri, check=False)
            tracking.end_run(client, plan.mlflow_run_id, "failed", summary.get("reason"))
        return summary
    points = budget_point_records(plan)
    if evaluate and plan.cfg.eval.num_samples > 0:
        from jobs.evaluation.points import evaluate_points

        usage: dict[str, float] = {}
        points = evaluate_points(plan, points, usage)
        summary["eval_extra_cpu_s"] = usage.get("eval_extra_cpu_s", 0.0)
    summary["points"] = [p.to_dict() for p in points]
    summary["wall_s"] = time.time() - run.t_start
    storage.write_json(storage.join(plan.run_dir, "points.json"), summary["points"])
    if plan.mlflow_run_id:
        from pipelines.infra import tracking

        client = tracking.client(plan.tracking_uri, check=False)
        client.log_text(plan.mlflow_run_id, json.dumps(summary["points"], indent=2), tracking.POINTS_ARTIFACT)
        if run.owned:
            tracking.end_run(client, plan.mlflow_run_id, "finished")
    return summary


def run_training(
    cfg: TrainConfig, *, plan: Optional[RunPlan] = None, callbacks: Optional[list] = None, evaluate: bool = True
) -> dict:
    """Validate, train on Ray Train, evaluate the budget points; the run's summary (status, points, ...)."""
    plan = plan or resolve_run(cfg)
    check_run_storage(plan.cfg)  # before anything is written: a local path on a multi-node cluster is refused
    return train_prepared(prepare_run(plan), callbacks=callbacks, evaluate=evaluate)


def train_prepared(
    run: "PreparedRun",
    *,
    callbacks: Optional[list] = None,
    evaluate: bool = True,
    trainer: Optional[type] = None,
) -> dict:
    """Train one prepared run (a failed result is cleared first: a rerun trains it again from its last good
    checkpoint), then finish it; an exception ends it FAILED in MLflow with the reason, never left RUNNING.
    `trainer`: a jobs.train.loop.Trainer subclass (jobs/distill)."""
    plan = run.plan
    clear_failed([run])
    before = say_other_code(plan, "already trained")
    software_before = say_other_software(plan, "already trained")
    try:
        train_runs([run], callbacks=callbacks, trainer=trainer)
    except Exception as exc:  # noqa: BLE001 - FAILED in MLflow with the reason, never left RUNNING
        import traceback

        traceback.print_exc()
        return abandon_runs([run], failure_reason(exc))[0]
    say_other_code(plan, RESUMED_FROM_OTHER_CODE, before)
    say_other_software(plan, RESUMED_FROM_OTHER_CODE, software_before)
    return finish_run(run, evaluate=evaluate)


RESUMED_FROM_OTHER_CODE = "resumed or started from a checkpoint"


def say_other_code(plan: RunPlan, how: str, before: Sequence[str] = ()) -> list[str]:
    """Say that other training code trained this finished run, in part or whole; the other codes. Called before
    training ("already trained") and after it with what that call returned (`before`), so a run resumed or started
    from a checkpoint that other code wrote is said once too."""
    other = trained_by_other_code(plan)
    if other and other != list(before):
        print(
            f"[ditscale] {plan.run_name}: {how}, trained in part or whole by other training code (fingerprint "
            f"{', '.join(other)}; this code {plan.code}); it is used as it is. To train it with this code alone, use "
            "another checkpoint.storage or remove its directory.",
            flush=True,
        )
    return other


def say_other_software(plan: RunPlan, how: str, before: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Say that other software than this process's trained this finished run, in part or whole
    (`trained_on_other_software`); those versions. Called before training ("already trained") and after it with what
    that call returned (`before`), so a run resumed or started from a checkpoint another torch wrote is said once
    too."""
    other = trained_on_other_software(plan)
    if other and other != before:
        print(
            f"[ditscale] {plan.run_name}: {how}, trained in part or whole on other software ({software_words(other)}); "
            "it is used as it is, though the same code and settings can round differently there. To train it here "
            "alone, use another checkpoint.storage or remove its directory.",
            flush=True,
        )
    return other


def run_local(
    cfg: TrainConfig, checkpoint_root: str, *, plan: Optional[RunPlan] = None, trainer: Optional[type] = None
) -> dict:
    """The same loop (`trainer`: a Trainer subclass, default Trainer) in this process on in-memory rows, no Ray
    (baseline for the bench; reference in tests)."""
    from jobs.train.data import driver_rows
    from jobs.train.loop import LocalEnv, Trainer

    plan = plan or resolve_run(cfg, check_mlflow=False)
    plan = dataclasses.replace(plan, mlflow_run_id=None, tracking_uri=None)
    with contextlib.ExitStack() as downloads:  # a remote init_from's download: deleted after the run
        if cfg.checkpoint.init_from:
            local = downloads.enter_context(storage.local_copy_scope(cfg.checkpoint.init_from))
            plan = dataclasses.replace(plan, init_from_local=local)
        attach_worker_data(plan)
        rows = driver_rows(plan, plan.val["id"] if plan.val is not None else None)
        env = LocalEnv(rows=rows, checkpoint_root=checkpoint_root)
        out = (trainer or Trainer)(plan, env).run().to_dict()
    out["reports"] = env.reports
    return out
