"""The sweep's grid: trials (model x hyper-parameters, trained to every budget) and their validated run plans.

Trial ids are deterministic (a hash of the trial's resolved config), so a restarted sweep finds its finished
trials. A trial's training runs live under its training id, the same hash without the evaluation settings that
change no weights (`EVAL_ONLY`): a sweep rerun with another sampler, guidance or sample count makes new trials that
evaluate the runs already trained instead of training them again. Every training run of every trial is validated
here, once, before any cluster work; the plans then travel to the trials as they are.

Budget modes:
  separate  one training run per budget (each with its own full LR schedule).
  wsd       one warmup-stable-decay run to the largest budget; for each smaller budget B a short branch resumes
            the main run's checkpoint at the START of B's decay phase (step (1 - decay_fraction) * S_B, still in
            the shared stable phase, so its state is exactly what a run to B would have) and decays to S_B. Every
            point is a properly decayed model (Hägele et al. 2024) at the cost of the largest run plus
            decay_fraction x the sum of the smaller budgets, instead of the sum over budgets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from ditcore.config import ConfigError, apply_overrides, from_dict, merge, to_dict
from jobs.sweep.config import SweepConfig
from jobs.train.config import EvalConfig, ExecutionConfig, TrainConfig, model_display_name, wsd_decay_start
from jobs.train.plan import RunPlan, resolve_run, steps_for_budget
from pipelines.infra import storage

# Evaluation settings that change no weights: trials that differ only in these share their training runs. (The
# budget points, `eval.fractions` and `eval.val_every` decide which checkpoints training keeps, so they stay.)
EVAL_ONLY = (
    "num_samples",
    "sampler",
    "steps",
    "guidance",
    "seed",
    "num_actors",
    "spare_cpus",
    "num_gpus",
    "classifier",
)


# Execution settings that change what a run computes (besides workers and seed), in the trial id when set.
_WEIGHT_RUN_KEYS = ("deterministic", "fsdp", "grad_accum", "fsdp_mixed_precision", "bf16")


@dataclass
class Trial:
    """One grid cell: a model + hyper-parameters, trained to every budget."""

    trial_id: str
    name: str
    train: TrainConfig  # the config of the LARGEST budget (per-budget runs derive from it)
    budgets: list[float]
    hparams: dict[str, Any]
    arm: Optional[str] = None
    train_id: str = ""  # names the training runs: the trial id without EVAL_ONLY (the trial id when empty)

    @property
    def runs_id(self) -> str:
        """The id its training runs are stored and named under."""
        return self.train_id or self.trial_id


@dataclass
class RunSpec:
    """One training run of a trial: its plan, the budget it stands for and its role (main / branch / separate)."""

    plan: RunPlan
    budget: float
    role: str


@dataclass
class TrialPlan:
    """A trial with the validated plans of its training runs (the main run first)."""

    trial: Trial
    runs: list[RunSpec]
    mode: str


def sweep_dir(cfg: SweepConfig) -> str:
    """<output>/<name> (absolute for local paths)."""
    root = cfg.output if storage.is_s3(cfg.output) else os.path.abspath(os.path.expanduser(cfg.output))
    return storage.join(root, cfg.name)


def trial_storage(trial: Trial) -> str:
    """<sweep>/runs/<training id>: the trial's Ray Train run directory; its training runs are subdirectories."""
    return storage.join(trial.train.checkpoint.storage, trial.runs_id)


def _model_spec(entry: Any, base_model: dict) -> dict:
    """A grid `models` entry -> ModelSpec dict (preset name, or fields overriding the base model)."""
    if isinstance(entry, str):
        return {
            **{k: v for k, v in base_model.items() if k in ("adapt_to_data",)},
            "preset": entry,
            "overrides": dict(base_model.get("overrides") or {}),
        }
    if isinstance(entry, dict):
        if set(entry) & {"preset", "overrides", "name", "adapt_to_data"}:
            return {**base_model, **entry}
        if "arch" in entry:
            return {**base_model, "preset": None, "overrides": dict(entry)}
        return {**base_model, "overrides": {**(base_model.get("overrides") or {}), **entry}}
    raise ConfigError(f"models: entries must be preset names or mappings, got {entry!r}")


def _split_settings(entry: Any) -> tuple[Any, dict[str, Any]]:
    """A `models` entry -> (the model, its own settings): `{preset: MMDiT-d1, set: {optim.lr: 0.004}}` trains that
    model with those dotted-key settings (e.g. a learning rate tuned per size); they are recorded with its trial's
    hyper-parameters."""
    if not (isinstance(entry, dict) and "set" in entry):
        return entry, {}
    fixed = entry["set"]
    if not isinstance(fixed, dict) or not fixed or any(isinstance(v, list) for v in fixed.values()):
        raise ConfigError(f"models: 'set' of {entry!r} must map dotted keys to single values, e.g. {{optim.lr: 0.004}}")
    model = {k: v for k, v in entry.items() if k != "set"}
    if set(model) == {"preset"}:  # as the plain name: the same trial (id) as that model without settings
        model = model["preset"]
    return model, dict(fixed)


def sweep_base(cfg: SweepConfig) -> dict:
    """The TrainConfig mapping every trial starts from: `base_config` (a train YAML) with `base` over it, checked."""
    from pipelines.infra.config_files import read_yaml

    base = merge(read_yaml(cfg.base_config) if cfg.base_config else {}, cfg.base)
    from_dict(TrainConfig, base, where="base")  # unknown keys in the base -> error naming base.<key>
    return base


def _check(cfg: SweepConfig) -> list[tuple[Optional[str], Any]]:
    """(arm, model entry) pairs of the grid; errors name the bad key."""
    if cfg.models and cfg.arms:
        raise ConfigError("models / arms: give the models either as one list or grouped into arms, not both")
    entries = [(None, m) for m in cfg.models] + [(arm, m) for arm, ms in cfg.arms.items() for m in ms]
    if not entries:
        raise ConfigError("models: the sweep needs at least one model")
    if not cfg.budgets:
        raise ConfigError("budgets: the sweep needs at least one budget (FLOPs)")
    if not all(isinstance(b, (int, float)) and math.isfinite(b) and b > 0 for b in cfg.budgets):
        raise ConfigError(f"budgets: must be finite positive FLOPs, got {cfg.budgets}")
    if len({float(b) for b in cfg.budgets}) != len(cfg.budgets):
        dup = sorted({float(b) for b in cfg.budgets if [float(x) for x in cfg.budgets].count(float(b)) > 1})
        raise ConfigError(f"budgets: {dup} given more than once (each budget is trained once)")
    if not cfg.name or cfg.name in (".", "..") or "/" in cfg.name or "\\" in cfg.name:
        raise ConfigError(f"name: {cfg.name!r} must be one folder name (the sweep's directory under output)")
    if not str(cfg.mlflow.experiment or "").strip():
        raise ConfigError("mlflow.experiment: must be a non-empty experiment name")
    storage.check_location(cfg.output, "output")
    if not storage.is_s3(cfg.output) and os.path.isfile(os.path.expanduser(cfg.output)):
        raise ConfigError(f"output: {cfg.output!r} is a file, not a directory")
    if cfg.max_concurrent < 0:
        raise ConfigError(f"max_concurrent must be >= 0 (0: as many as the CPUs fit), got {cfg.max_concurrent}")
    if not (math.isfinite(cfg.trial_cpus) and cfg.trial_cpus > 0):
        raise ConfigError(f"trial_cpus must be a finite number > 0, got {cfg.trial_cpus}")
    if cfg.num_cpus is not None and cfg.num_cpus < 1:
        raise ConfigError(f"num_cpus must be >= 1 (or null: the machine's), got {cfg.num_cpus}")
    for k, values in cfg.hparams.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"hparams.{k}: expected a non-empty list of values")
    return entries


def _base_eval(base: dict) -> dict:
    """The base training config's evaluation settings, defaults filled in (a swept evaluation key's base value)."""
    return {**to_dict(EvalConfig()), **dict(base.get("eval") or {})}


def _trial(cfg: SweepConfig, base: dict, arm: Optional[str], entry: Any, hp: dict, budgets: list[float]) -> Trial:
    d = merge(base, {"model": _model_spec(entry, dict(base.get("model") or {})), "budget_flops": budgets[-1]})
    d = apply_overrides(d, [f"{k}={json.dumps(v)}" for k, v in hp.items()])
    d = merge(
        d,
        {
            "checkpoint": {"storage": storage.join(sweep_dir(cfg), "runs")},
            "mlflow": {
                "experiment": cfg.mlflow.experiment,
                **({"tracking_uri": cfg.mlflow.tracking_uri} if cfg.mlflow.tracking_uri else {}),
            },
            **({"optim": {"schedule": "wsd"}} if cfg.mode == "wsd" else {}),
        },
    )
    try:
        tc = from_dict(TrainConfig, d)
    except ConfigError as e:
        raise ConfigError(f"trial {entry!r} {hp}: {e}") from e
    train = {k: v for k, v in to_dict(tc).items() if k not in ("checkpoint", "mlflow", "run", "budget_flops", "debug")}
    # A swept key the resolved training config holds is in the id through that config: a value equal to the base
    # setting is the same trial (and training) as the base, and adding an axis at the base value keeps the ids.
    # Others (run.* keys that change no weights) stay in the id by name, so trials of one grid stay apart.
    held = {k for k in hp if k.split(".", 1)[0] in train}
    ident = {
        "model": to_dict(tc.model),
        "hp": {k: v for k, v in hp.items() if k not in held},
        "mode": cfg.mode,
        "budgets": budgets,
        "train": train,
        "workers": tc.run.num_workers,
        "seed": tc.run.seed,
    }
    # Further settings that change the weights, each only when set, so the ids of trials without them stay.
    if tc.checkpoint.init_from:
        ident["init_from"] = tc.checkpoint.init_from
    default_run = ExecutionConfig()
    for key in _WEIGHT_RUN_KEYS:
        if key == "bf16" and not tc.run.use_gpu:
            continue  # bf16 autocast is for GPUs only: on CPUs it changes nothing
        if getattr(tc.run, key) != getattr(default_run, key):
            ident[f"run.{key}"] = getattr(tc.run, key)
    train_eval = {k: v for k, v in ident["train"]["eval"].items() if k not in EVAL_ONLY}
    # Trials of one grid that differ only in an evaluation setting keep apart training runs (never two writers in
    # one run directory): their swept evaluation keys stay in the training id by name.
    # A value equal to the base setting is the base's training (adding the axis at the base value keeps its runs).
    base_eval = _base_eval(base)
    eval_hp = {
        k: v
        for k, v in hp.items()
        if k.startswith("eval.") and k.split(".", 1)[1] in EVAL_ONLY and v != base_eval.get(k.split(".", 1)[1])
    }
    train_ident = {**ident, "hp": {**ident["hp"], **eval_hp}, "train": {**ident["train"], "eval": train_eval}}
    tid, train_tid = (
        hashlib.sha1(json.dumps(i, sort_keys=True, default=str).encode()).hexdigest()[:10] for i in (ident, train_ident)
    )
    label = model_display_name(tc.model).replace("/", "_")
    hp_label = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in hp.items())
    return Trial(
        trial_id=f"{label}-{tid}",
        name=label + (f"[{hp_label}]" if hp_label else ""),
        train=tc,
        budgets=budgets,
        hparams=hp,
        arm=arm,
        train_id=f"{label}-{train_tid}",
    )


def _refuse_controlled(where: str, key: str, mode: str) -> None:
    """A key the sweep sets itself may not be swept or set per model: it would be overwritten (two trials, one
    training under two labels) or break the grid's points."""
    reason = None
    if key == "budget_flops":
        reason = "the budgets are the grid's `budgets`"
    elif key in ("run.name", "checkpoint.storage") or key == "mlflow" or key.startswith("mlflow."):
        reason = "the sweep names, stores and records its runs itself (name, output, mlflow)"
    elif mode == "wsd" and key in ("optim.schedule", "eval.budgets", "eval.fractions"):
        reason = "mode: wsd trains every trial with the wsd schedule, one decayed branch per budget in `budgets`"
    if reason:
        raise ConfigError(f"{where}: not a hyper-parameter of a sweep ({reason})")


def expand_grid(cfg: SweepConfig) -> list[Trial]:
    """Trials of the grid with deterministic ids; every trial's TrainConfig is built (bad keys named)."""
    entries = _check(cfg)
    base = sweep_base(cfg)
    if cfg.mode == "wsd" and (base.get("eval") or {}).get("budgets"):
        raise ConfigError(
            "base.eval.budgets: not used with mode: wsd (a point inside the stable phase is undecayed; every budget is "
            "its own decayed branch): list the budgets in `budgets`"
        )
    if cfg.mode == "wsd" and (base.get("eval") or {}).get("fractions"):
        raise ConfigError(
            "base.eval.fractions: not used with mode: wsd (a point part-way through the main run is undecayed and "
            "would be evaluated, then left out of the grid): list more budgets in `budgets` instead, or set "
            "base.eval.fractions=[]"
        )
    for key in cfg.hparams:
        _refuse_controlled(f"hparams.{key}", key, cfg.mode)
    budgets = sorted(float(b) for b in cfg.budgets)
    keys = sorted(cfg.hparams)
    combos = list(itertools.product(*(cfg.hparams[k] for k in keys))) or [()]
    trials = []
    for arm, entry in entries:
        model, fixed = _split_settings(entry)
        for key in fixed:
            _refuse_controlled(f"models: {entry!r} set {key}", key, cfg.mode)
        for combo in combos:
            hp = dict(zip(keys, combo))
            if clash := sorted(set(hp) & set(fixed)):
                raise ConfigError(
                    f"models: {entry!r} sets {', '.join(clash)}, which hparams also sweeps; give it in one place"
                )
            trials.append(_trial(cfg, base, arm, model, {**hp, **fixed}, budgets))
    seen: dict[str, Trial] = {}
    for t in trials:
        if t.trial_id in seen:
            first = seen[t.trial_id]
            where = f" (arms {first.arm!r} and {t.arm!r})" if first.arm != t.arm else ""
            raise ConfigError(
                f"models/hparams: the grid contains the trial {t.name} twice{where}: two entries give the same "
                f"model and settings"
            )
        seen[t.trial_id] = t
    # Trials of one grid differ in their hyper-parameters (evaluation ones included), which the training id keeps, so
    # they never share training runs (never two writers in one directory): only a rerun with other evaluation settings.
    return trials


def _replace(cfg: TrainConfig, **sections: dict) -> TrainConfig:
    """A copy of `cfg` with fields of its sections replaced (e.g. run={"name": ...}); budget_flops top level."""
    top = {k: v for k, v in sections.items() if not isinstance(v, dict)}
    nested = {k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items() if isinstance(v, dict)}
    return dataclasses.replace(cfg, **top, **nested)


def trial_configs(trial: Trial, mode: str) -> list[tuple[TrainConfig, float, str]]:
    """(TrainConfig, budget, role) per training run of a trial; the first is the main (largest-budget) run."""
    base = _replace(trial.train, checkpoint={"storage": trial_storage(trial)})
    runs = [(_replace(base, run={"name": f"{trial.runs_id}-main"}), trial.budgets[-1], "main")]
    for i, b in enumerate(trial.budgets[:-1]):
        c = _replace(base, budget_flops=b, run={"name": f"{trial.runs_id}-b{i}"})
        if mode == "wsd":  # a branch only trains its decay phase: learning-curve points before it would not exist
            c = _replace(c, eval={"fractions": [], "budgets": []})
        runs.append((c, b, "branch" if mode == "wsd" else "separate"))
    return runs


def _wsd_branches(runs: list[RunSpec]) -> None:
    """Point each WSD branch at the main run's checkpoint at the branch's decay start (kept by the main run)."""
    main = runs[0].plan
    fpi, batch = main.train_flops_per_image, main.cfg.data.batch_size
    starts = [
        wsd_decay_start(steps_for_budget(r.plan.cfg.budget_flops, fpi, batch), r.plan.cfg.optim) for r in runs[1:]
    ]
    main.branch_steps = tuple(starts)
    for r, start in zip(runs[1:], starts):
        if start > 0:
            init = storage.join(main.run_dir, "checkpoints", f"step_{start:08d}")
            r.plan.cfg = _replace(r.plan.cfg, checkpoint={"init_from": init})


def _refuse_budgets_of_one_length(trial: Trial, runs: list[RunSpec]) -> None:
    """Two budgets less than one step apart train the same number of steps: the same run, twice, at two labels."""
    by_steps: dict[int, float] = {}
    for r in runs:
        steps = r.plan.total_steps
        if steps in by_steps:
            one_step = r.plan.train_flops_per_image * r.plan.cfg.data.batch_size
            low, high = sorted((by_steps[steps], r.budget))
            raise ConfigError(
                f"budgets: {low:.4g} and {high:.4g} both train {trial.name} for {steps} steps (one step is "
                f"{one_step:.4g} FLOPs: {r.plan.train_flops_per_image:.4g} per image x batch "
                f"{r.plan.cfg.data.batch_size}), so they would be the same run twice; spread them or drop one"
            )
        by_steps[steps] = r.budget


def plan_trials(trials: list[Trial], mode: str) -> list[TrialPlan]:
    """Validate every run of every trial (data set vs model, budgets, MLflow once) into trial plans, each run with
    its directory."""
    from jobs.train.driver import run_dir

    out, check_mlflow, manifests = [], True, {}
    for t in trials:
        runs = []
        for c, budget, role in trial_configs(t, mode):
            try:
                plan = resolve_run(c, check_mlflow=check_mlflow, manifest=manifests.get(c.data.manifest))
            except ConfigError as e:
                raise ConfigError(f"trial {t.name} at budget {budget:.3g}: {e}") from e
            plan.run_dir = run_dir(c, plan.run_name)
            manifests[c.data.manifest] = plan.manifest
            check_mlflow = False
            runs.append(RunSpec(plan=plan, budget=budget, role=role))
        _refuse_budgets_of_one_length(t, runs)
        if mode == "wsd":
            _wsd_branches(runs)
        out.append(TrialPlan(trial=t, runs=runs, mode=mode))
    return out
