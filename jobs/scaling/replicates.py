"""Seed replicates of one grid: sweeps of the same models and budgets trained with other seeds, pooled into one
set of points for the fits (`ditscale fit --replicate ...`).

One grid of tiny models is one draw: another training seed (initialisation, data order, noise) moves every FID by
up to a standard error or two, and with it the fitted exponent and the held-out check. Fitting the mean over k
replicates is the usual remedy; the points keep what each replicate measured.
"""

from __future__ import annotations

import math
from typing import Any

from ditcore.scaling import FitError
from jobs.scaling.plots import finite_or_none

# What makes two points the same measurement in two replicates of a grid.
_KEY = ("arm", "model", "params", "budget_flops", "step")
# Point metrics that are averaged over the replicates.
_MEAN = ("fid", "val_loss", "attr_acc", "class_acc")
# Evaluation settings every replicate must share for its FIDs to be averaged.
_SAME = ("eval_key", "fid_network", "fid_samples")

# The training settings (config/train.json of a trial's run, dotted) that may differ between replicates: the
# seed, where and how it ran (run.*, checkpoint storage, the data's path and loader), tracking and evaluation (the
# evaluation settings are compared through `_SAME`), and the logged run's own budget (a trial's main run trains to
# the largest budget its sweep lists; a replicate of some of the budgets is still one; each point's budget is part
# of what it is matched by). Any other difference is another experiment, not a replicate.
_FREE_PREFIXES = ("run.", "mlflow.", "eval.", "debug.")
_FREE_KEYS = frozenset(
    {"checkpoint.storage", "checkpoint.every_n_steps", "checkpoint.keep", "checkpoint.sharded", "data.manifest"}
    | {"data.loader", "data.materialize", "budget_flops"}
)

RULE = (
    "each point is the mean over the sweeps of the (arm, model, params, budget, step) measured in all of them; "
    "fid_se = max(sd across the sweeps, rms of their sampling se) / sqrt(number of sweeps); checkpoint and run_id "
    "are those of the replicate with the lowest FID"
)


def _key(p: dict) -> tuple:
    return tuple(p.get(k) for k in _KEY)


def _mean(vals: list[float]) -> float:
    return sum(vals) / len(vals)


def training_settings(config: dict) -> dict[str, Any]:
    """The settings of a training config (as config/train.json holds it) that replicates must share, dotted."""
    flat: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            elif not key.startswith(_FREE_PREFIXES) and key not in _FREE_KEYS:
                flat[key] = v

    walk(config, "")
    return flat


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else repr(v)


def _check_settings(key: tuple, reps: list[dict], names: list[str], settings: list[dict]) -> None:
    """FitError when two sweeps trained the point at `key` with other settings (learning rate, batch, schedule,
    model, objective, ...): pooling those averages two experiments. Runs without a recorded config are not compared."""
    known = [(n, settings[i].get(r.get("run_id"))) for i, (n, r) in enumerate(zip(names, reps))]
    known = [(n, s) for n, s in known if s is not None]
    if not known:
        return
    first, ref = known[0]
    for name, s in known[1:]:
        # Keys one config lacks are not compared: a config logged before a setting existed ran at its default.
        diff = sorted(k for k in set(ref) & set(s) if ref[k] != s[k])
        if diff:
            shown = "; ".join(f"{k}: {ref[k]!r} vs {s[k]!r}" for k in diff[:4])
            more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
            raise FitError(
                f"{first} and {name} trained model {key[1]!r} at budget {_num(key[3])} with other settings "
                f"({shown}{more}): not seed replicates; pool sweeps of one config that differ in base.run.seed only"
            )


def _check_independent(key: tuple, reps: list[dict], names: list[str]) -> None:
    """FitError when two sweeps' points at `key` are one training run (a trial id or checkpoint in both: the same
    sweep logged twice, or a seed rerun whose FIDs repeat bit for bit). Sweeps of other hyper-parameters are not
    told apart here (a point's `hparams` holds only the keys its sweep listed): `_check_settings` does that."""
    for field, what in (("trial_id", "trial"), ("checkpoint", "checkpoint")):
        seen: dict[str, str] = {}
        for name, r in zip(names, reps):
            v = r.get(field)
            if v and str(v) in seen:
                raise FitError(
                    f"{seen[str(v)]} and {name} both hold {what} {v!r} (model {key[1]!r} at budget {key[3]!r}): the "
                    "same training run, not a replicate; pool sweeps trained with other seeds (base.run.seed)"
                )
            if v:
                seen[str(v)] = name


def _keyed_sweeps(sweeps: list[list[dict]], names: list[str]) -> list[dict[tuple, dict]]:
    """Each sweep's points by (arm, model, params, budget, step); FitError for a sweep with two points at one key or
    none at all."""
    by_sweep: list[dict[tuple, dict]] = []
    for name, pts in zip(names, sweeps):
        keyed: dict[tuple, dict] = {}
        for p in pts:
            k = _key(p)
            if k in keyed:
                raise FitError(
                    f"{name}: two points for model {p.get('model')!r} at budget {p.get('budget_flops')!r}, "
                    f"step {p.get('step')!r}"
                )
            keyed[k] = p
        if not keyed:
            raise FitError(f"{name}: no points")
        by_sweep.append(keyed)
    return by_sweep


def _check_same_evaluation(key: tuple, reps: list[dict]) -> None:
    """FitError when the replicates of one point were evaluated with different settings (`_SAME`)."""
    for field in _SAME:
        seen = {str(r.get(field)) for r in reps}
        if len(seen) > 1:
            why = (
                " (the key also names how fid_se is resampled: a sweep evaluated before FID standard errors came "
                "from half-samples has another; run it again to evaluate its checkpoints anew)"
                if field == "eval_key"
                else ""
            )
            raise FitError(
                f"model {key[1]!r} at budget {key[3]!r}: the sweeps differ in {field} ({', '.join(sorted(seen))}); "
                f"only FIDs from the same evaluation settings can be averaged{why}"
            )


def _pooled_point(reps: list[dict]) -> dict:
    """One point from its replicates (see RULE): the metrics' means, the FID's spread and standard error, and the
    checkpoint of the best replicate."""
    k_n = len(reps)
    out = dict(reps[0])
    for field in _MEAN:
        vals = [finite_or_none(r.get(field)) for r in reps]
        broken = any(r.get(field) is not None and v is None for r, v in zip(reps, vals))
        # A replicate's NaN keeps the pooled value NaN (named by the fit's non_finite_metric diagnostic and left
        # out of the fits), not None (a point silently without that metric).
        out[field] = _mean(vals) if all(v is not None for v in vals) else (float("nan") if broken else None)
    fids = [finite_or_none(r.get("fid")) for r in reps]
    if all(f is not None for f in fids):
        best = reps[min(range(k_n), key=lambda i: fids[i])]
        out.update(checkpoint=best.get("checkpoint"), run_id=best.get("run_id"), trial_id=best.get("trial_id"))
        sd = math.sqrt(sum((f - out["fid"]) ** 2 for f in fids) / (k_n - 1))
        ses = [finite_or_none(r.get("fid_se")) for r in reps]
        rms_se = math.sqrt(_mean([s * s for s in ses])) if all(s is not None for s in ses) else 0.0
        out["fid_se"] = max(sd, rms_se) / math.sqrt(k_n)
        out["fid_ci"] = None  # a per-sample interval of one replicate does not describe the mean
        out["fid_replicates"] = fids
        out["fid_replicate_sd"] = sd
    out["replicates"] = k_n
    return out


def pool_replicates(
    sweeps: list[list[dict]], names: list[str] | None = None, settings: list[dict[str, dict]] | None = None
) -> tuple[list[dict], dict[str, Any]]:
    """(pooled points, summary) of >= 2 sweeps' points (plain dicts, as `to_dicts` gives them).

    Points measured in every sweep are pooled (see RULE); points missing from some sweep are left out and counted
    in the summary ("points_dropped", with up to 5 examples). FitError when fewer than 2 sweeps are given, when
    they share no point, when a pooled point was evaluated with different settings in two sweeps (eval_key,
    feature network or sample count): their FIDs are not the same measurement, or when two sweeps hold the same
    training run (trial id or checkpoint): not seed replicates. `settings` (one map per sweep, run_id ->
    `training_settings` of that run's config) refuses points trained with other settings."""
    names = names or [f"sweep {i}" for i in range(len(sweeps))]
    if len(sweeps) < 2:
        raise FitError(f"pooling replicates needs at least 2 sweeps, got {len(sweeps)}")
    by_sweep = _keyed_sweeps(sweeps, names)
    common = [k for k in by_sweep[0] if all(k in s for s in by_sweep[1:])]
    everywhere = set(common)
    dropped = sorted({k for s in by_sweep for k in s if k not in everywhere}, key=str)
    if not common:
        raise FitError(f"the {len(sweeps)} sweeps ({', '.join(names)}) share no (model, budget, step) point")
    pooled = []
    for key in common:
        reps = [s[key] for s in by_sweep]
        _check_independent(key, reps, names)
        if settings is not None:
            _check_settings(key, reps, names, settings)
        _check_same_evaluation(key, reps)
        pooled.append(_pooled_point(reps))
    summary = {
        "n_sweeps": len(sweeps),
        "sweeps": list(names),
        "points_pooled": len(pooled),
        "points_dropped": len(dropped),
        "dropped_examples": [dict(zip(_KEY, k)) for k in dropped[:5]],
        "rule": RULE,
    }
    return pooled, summary


__all__ = ["RULE", "pool_replicates", "training_settings"]
