"""Scaling-law fits of a sweep (`ditscale fit`), with plots and a JSON report logged to the sweep's parent run.

From every trial's points: FID(C) = A * C^-beta + FID_inf on the compute-efficient frontier and per model, the
validation-loss law L(C) = A * C^-alpha + L_inf, and N*(C) = k * C^a from isoFLOP minima, the laws with
profile-likelihood intervals, N* with a bootstrap interval, and a held-out check (ditcore.scaling). Compute C =
training FLOPs (multiply-add = 2 FLOPs, training step = 3 x forward).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ditcore.scaling import (
    FitError,
    PowerLawFit,
    compare_arms,
    compute_frontier,
    fit_diagnostics,
    fit_frontier_law,
    fit_loss_law,
    isoflop_analysis,
)
from ditcore.scaling.arms import flat_arms
from ditcore.scaling.frontier import budget_of, check_metric, compute_of, interior_count
from ditcore.scaling.powerlaw import fit_power_law
from jobs.scaling.plots import PLOTS, finite_or_none, write_plots
from pipelines.infra import storage
from pipelines.infra.storage import json_safe

CONVENTION = "compute C = training FLOPs (multiply-add = 2 FLOPs, training step = 3 x forward FLOPs)"
REPORT_NAME = "fit_report.json"
ARTIFACT_DIR = "fit"
POOLED_ARTIFACT_DIR = "fit_replicates"  # a --replicate fit's, so it never replaces the sweep's own fit
_FRONTIER_KEYS = (
    "model",
    "params",
    "flops",
    "budget_flops",
    "step",
    "fid",
    "fid_se",
    "fid_samples",
    "val_loss",
    "checkpoint",
    "run_id",
    "arm",
)


def clean_points(points: list[dict], metric: str = "fid") -> list[dict]:
    """Check points: each needs a positive compute ("flops" or "budget_flops"), and a finite `metric` or val_loss
    must be > 0 (the laws are fitted in log space; a zero FID is a broken evaluation); a model name is filled in.
    `metric` must be one that falls as models improve."""
    check_metric(metric)
    if not isinstance(points, list):
        raise FitError(f"points must be a list of dicts, got {type(points).__name__}")
    out = []
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise FitError(f"point {i} is not a dict: {p!r}")
        c = compute_of(p)
        if c is None or c <= 0:
            where = f"point {i}" + (f" (run {p['run_id']})" if p.get("run_id") else "")
            raise FitError(
                f"{where}: needs a positive 'flops' or 'budget_flops', got flops={p.get('flops')!r} "
                f"budget_flops={p.get('budget_flops')!r}"
            )
        for key in dict.fromkeys((metric, "val_loss")):
            v = finite_or_none(p.get(key))
            if v is not None and v <= 0:
                where = f"point {i}" + (f" (run {p['run_id']})" if p.get("run_id") else "")
                raise FitError(
                    f"{where}: {key}={v!r} for model {p.get('model')!r} at budget {p.get('budget_flops')!r}; "
                    f"the laws need {key} > 0 (fix or drop this point's evaluation)"
                )
        extra = {"fid_num_samples": p["fid_samples"]} if p.get("fid_samples") and "fid_num_samples" not in p else {}
        out.append({**p, **extra, "model": str(p.get("model") or f"N={p.get('params')}")})
    return out


def _law(fit_fn: Callable, xs: list[float], ys: list[float], what: str, **kw: Any) -> tuple[dict, PowerLawFit | None]:
    """(law dict or {"error": ...}, fit object or None)."""
    try:
        fit = fit_fn(xs, ys, **kw)
    except FitError as e:
        return {"error": f"{what}: {e}"}, None
    return fit.to_dict(), fit


def _frontier_law(pts: list[dict], metric: str, kw: dict) -> tuple[dict, PowerLawFit | None, list[dict]]:
    """The law on the compute frontier, with each point's FID sampling noise propagated when points carry it."""
    with_metric = [p for p in pts if finite_or_none(p.get(metric)) is not None]
    front = compute_frontier(pts, metric)
    if len({budget_of(p) for p in front}) < 3:
        name = metric.upper()
        raise FitError(
            f"need {metric!r} at >= 3 distinct compute budgets to fit {name}(C) = A * C^-beta + {name}_inf; "
            f"got {len(with_metric)} point(s) with {metric!r} at "
            f"{len({budget_of(p) for p in with_metric})} budget(s) ({len(pts)} points in total)"
        )
    se_key = f"{metric}_se" if any(finite_or_none(p.get(f"{metric}_se")) for p in pts) else None
    names = ("A", "beta", "FID_inf" if metric == "fid" else f"{metric.upper()}_inf")
    try:
        fit, front = fit_frontier_law(pts, metric, se_key=se_key, names=names, **kw)
    except FitError as e:
        return {"error": f"{metric} frontier: {e}"}, None, front
    return fit.to_dict(), fit, front


def _per_model(pts: list[dict], metric: str, models: dict, kw: dict) -> tuple[dict, dict]:
    names = ("A", "beta", "FID_inf" if metric == "fid" else f"{metric.upper()}_inf")
    per_model, objs = {}, {}
    for name in sorted(models, key=lambda m: (models[m] or 0, m)):
        mp = [p for p in pts if p["model"] == name]
        fm = [p for p in mp if finite_or_none(p.get(metric)) is not None]
        lm = [p for p in mp if finite_or_none(p.get("val_loss")) is not None]
        fl, objs[name] = _law(
            lambda xs, ys, **k: fit_power_law(xs, ys, names=names, **k),
            [compute_of(p) for p in fm],
            [float(p[metric]) for p in fm],
            f"{name} {metric}",
            **kw,
        )
        ll, _ = _law(
            fit_loss_law, [compute_of(p) for p in lm], [float(p["val_loss"]) for p in lm], f"{name} val_loss", **kw
        )
        per_model[name] = {"params": models[name], "n_points": len(mp), f"{metric}_law": fl, "loss_law": ll}
    return per_model, objs


def _isoflop(pts: list[dict], metric: str, kw: dict) -> tuple[dict, dict]:
    iso, objs = {}, {}
    for m in (metric, "val_loss"):
        try:
            res = isoflop_analysis(pts, m, return_samples=True, **kw)
            objs[m] = res
            iso[m] = {
                **res,
                **{
                    law: {k: v for k, v in res[law].items() if k != "samples"}
                    for law in ("n_opt_law", "d_opt_law")
                    if isinstance(res.get(law), dict)
                },
            }
        except FitError as e:
            iso[m] = {"error": f"isoFLOP on {m}: {e}"}
    return iso, objs


def _arms(pts: list[dict], metric: str, kw: dict, fits_out: dict | None = None) -> dict:
    """Per-arm frontier laws and where one arm overtakes another, when the points come from >= 2 arms."""
    by_arm: dict[str, list[dict]] = {}
    for p in pts:
        if p.get("arm"):
            by_arm.setdefault(str(p["arm"]), []).append(p)
    if len(by_arm) < 2:
        return {}
    try:
        return compare_arms(by_arm, metric=metric, fits_out=fits_out, **kw)
    except FitError as e:
        return {"error": str(e)}


def _isoflop_by_arm(pts: list[dict], metric: str, kw: dict, report: dict) -> None:
    """With >= 2 architecture arms: one parabola per budget through both families' sizes mixes models of other
    FLOPs per parameter. The pooled N*(C) stays (its plots), named as such in the report's diagnostics, and each
    arm gets its own isoFLOP fit (`isoflop_by_arm`)."""
    arm_names = sorted({str(p["arm"]) for p in pts if p.get("arm")})
    if len(arm_names) < 2:
        return
    by_arm = {}
    for arm in arm_names:
        one = (_isoflop([p for p in pts if str(p.get("arm")) == arm], metric, kw)[0]).get(metric) or {}
        keys = ("n_opt_exponent", "n_opt_exponent_ci", "error")
        by_arm[arm] = {k: one.get(k) for k in keys if k in one}
        if one.get("budgets"):  # which N* are estimates and which bounds, as the quickstart report gives it
            by_arm[arm]["n_opt_interior"] = interior_count(one["budgets"])
    report["isoflop_by_arm"] = by_arm
    report["diagnostics"].append(
        {
            "code": "isoflop_across_arms",
            "message": (
                f"The isoFLOP analysis and N*(C) pool the {len(arm_names)} architecture arms "
                f"({', '.join(arm_names)}), whose models differ in FLOPs per parameter: read the compute-optimal "
                "size per arm (isoflop_by_arm), not from the pooled fit."
            ),
        }
    )


def _loss_diagnostics(loss_law: dict, loss_iso: dict | None) -> list[dict]:
    """The validation-loss law's and N*(C)'s own checks (a bound pinning alpha, an interval that is the search
    range, a held-out miss, minima at the grid's edge), each marked "about": "val_loss"; the isoFLOP sentences,
    which do not name their metric, say it."""
    if "error" in loss_law:  # not fitted (no validation loss at enough budgets): format_laws says so already
        return []
    law = fit_diagnostics(law=loss_law, metric="val_loss", what="validation-loss law")
    iso = fit_diagnostics(isoflop=loss_iso, metric="val_loss") if loss_iso and "error" not in loss_iso else []
    out = [
        d if "validation-loss" in d["message"] else {**d, "message": f"Validation-loss law: {d['message']}"}
        for d in law
    ]
    out += [
        {**d, "message": f"Validation-loss isoFLOPs: {d['message']}"}
        for d in iso
        if d["code"] != "isoflop_no_images"  # the same points, so the same sentence as the main metric's
    ]
    return [{**d, "about": "val_loss"} for d in out]


def fit_all(points: list[dict], *, metric: str = "fid", n_boot: int = 200, seed: int = 0) -> tuple[dict, dict]:
    """(JSON report, fit objects for plotting) of a sweep's points; FitError when too few budgets carry `metric`."""
    pts = clean_points(points, metric)
    kw = {"n_boot": n_boot, "seed": seed}
    law, law_obj, front = _frontier_law(pts, metric, kw)
    loss_front = compute_frontier(pts, "val_loss")
    loss_law, loss_obj = _law(
        fit_loss_law,
        [compute_of(p) for p in loss_front],
        [float(p["val_loss"]) for p in loss_front],
        "val_loss frontier",
        **kw,
    )
    models: dict[str, float | None] = {}
    for p in pts:
        models.setdefault(p["model"], finite_or_none(p.get("params")))
    per_model, per_model_obj = _per_model(pts, metric, models, kw)
    iso, iso_obj = _isoflop(pts, metric, kw)
    arm_fits: dict = {}
    arms_report = _arms(pts, metric, kw, arm_fits)
    report = {
        "convention": CONVENTION,
        "metric": metric,
        "n_points": len(pts),
        "n_points_with_metric": sum(finite_or_none(p.get(metric)) is not None for p in pts),
        "n_trials": len({p.get("run_id") for p in pts if p.get("run_id")}),
        "models": models,
        "budgets": sorted({budget_of(p) for p in pts}),
        "frontier": [{k: p.get(k) for k in _FRONTIER_KEYS if k in p} for p in front],
        f"{metric}_law": law,
        "loss_frontier": [{k: p.get(k) for k in _FRONTIER_KEYS if k in p} for p in loss_front],
        "loss_law": loss_law,
        "per_model": per_model,
        "isoflop": iso,
        "n_boot": n_boot,
        "seed": seed,
        "n_opt_exponent": (iso.get(metric) or {}).get("n_opt_exponent"),
        "n_opt_exponent_ci": (iso.get(metric) or {}).get("n_opt_exponent_ci"),
        "d_opt_exponent": (iso.get(metric) or {}).get("d_opt_exponent"),
        "d_opt_exponent_ci": (iso.get(metric) or {}).get("d_opt_exponent_ci"),
        # arms.<arm>.beta / beta_ci per arm; the pairwise crossings and statements in arm_comparison
        **({"arms": flat_arms(arms_report) or arms_report, "arm_comparison": arms_report} if arms_report else {}),
    }
    report["diagnostics"] = fit_diagnostics(
        law=law,
        frontier=report["frontier"],
        isoflop=iso.get(metric),
        points=pts,
        arms=arms_report or None,
        metric=metric,
    )
    if metric != "val_loss":
        report["diagnostics"] += _loss_diagnostics(loss_law, iso.get("val_loss"))
    _isoflop_by_arm(pts, metric, kw, report)
    objs = {
        "fid": law_obj,
        "loss": loss_obj,
        "per_model": per_model_obj,
        "isoflop": iso_obj,
        "points": pts,
        "fid_front": front,
        "loss_front": loss_front,
        "arm_fits": arm_fits,
    }
    return report, objs


def fit_points(points: list[dict], *, metric: str = "fid", n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """All fits of a sweep's points (no MLflow needed), as the JSON report; FitError if too few points."""
    return fit_all(points, metric=metric, n_boot=n_boot, seed=seed)[0]


def points_digest(points: list[dict]) -> str:
    """A short hash of a sweep's points (trial, budget, step and every measured value): a stored fit whose digest
    differs from the sweep's points now is out of date."""
    import hashlib

    keys = ("run_id", "model", "params", "budget_flops", "flops", "step", "fid", "val_loss", "checkpoint")
    rows = sorted(json.dumps([p.get(k) for k in keys], default=str) for p in points)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def check_output_folder(out: Path) -> None:
    """ConfigError unless folder `out` exists or could be made: its nearest existing ancestor is a writable
    directory (checked without making anything)."""
    import os

    from ditcore.config import ConfigError

    p = Path(out).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"output directory {str(out)!r}: {str(p)!r} is a file")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {str(out)!r}: {str(p)!r} is not writable")


def _run_settings(client: Any, points: list[dict]) -> dict[str, dict]:
    """run_id -> `training_settings` of the config/train.json its training logged, for the runs of `points` that
    have one (older records do not, and are not compared)."""
    from jobs.scaling.replicates import training_settings
    from pipelines.infra import tracking

    out: dict[str, dict] = {}
    for rid in sorted({p["run_id"] for p in points if p.get("run_id")}):
        if "config/train.json" not in {a.path for a in client.list_artifacts(rid, "config")}:
            continue
        cfg = tracking.read_json_artifact(client, rid, "config/train.json")
        if isinstance(cfg, dict):
            out[rid] = training_settings(cfg)
    return out


def run_fit(
    *,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    out_dir: str | None = None,
    metric: str = "fid",
    n_boot: int = 200,
    seed: int = 0,
    log: bool = True,
    replicates: list[str] | None = None,
) -> tuple[dict, Path, list[Path]]:
    """Read the sweep from MLflow, fit, write plots + report to `out_dir`, log them to the parent run; (report,
    output directory, the plots written).

    `replicates`: MLflow experiments of more sweeps of the same grid with other training seeds (each its newest
    sweep run); the fits then take each point's mean over all the sweeps (`jobs.scaling.replicates`), and the
    report's "replicates" says which sweeps and how many points were pooled. A pooled fit goes to its own
    places (`<experiment>-pooled` by default, artifacts under fit_replicates/, metrics fit.pooled.*), never over
    the sweep's own fit."""
    from ditcore.config import ConfigError
    from jobs.scaling.points import read_points, to_dicts
    from jobs.scaling.replicates import pool_replicates
    from pipelines.infra import tracking

    default = tracking.folder_name(experiment or parent_run_id or "sweep") + ("-pooled" if replicates else "")
    out = Path(out_dir or Path("fit_reports") / default).resolve()
    client = tracking.client(tracking_uri, must_exist=True)
    parent, points = read_points(client, experiment=experiment, parent_run_id=parent_run_id)
    if not points:
        raise FitError(f"sweep run {parent.info.run_id} has no trial points yet (no child run logged points.json)")
    check_output_folder(out)  # before the fit, not after it; made only once there is a report to write
    dicts = to_dicts(points)
    digest = points_digest(dicts)
    pooled = None
    if replicates:
        sweeps, names, runs = [dicts], [experiment or parent.info.run_id], [parent.info.run_id]
        for exp in replicates:
            rep_parent, rep_points = read_points(client, experiment=exp)
            if rep_parent.info.run_id in runs:
                raise FitError(f"replicate {exp!r}: sweep run {rep_parent.info.run_id} is already in the fit")
            sweeps.append(to_dicts(rep_points))
            names.append(exp)
            runs.append(rep_parent.info.run_id)
        dicts, pooled = pool_replicates(sweeps, names, [_run_settings(client, pts) for pts in sweeps])
        pooled["parent_run_ids"] = runs
    report, objs = fit_all(dicts, metric=metric, n_boot=n_boot, seed=seed)
    try:  # a mistyped experiment, metric or replicate leaves no empty folder behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output directory {str(out)!r}: {e.strerror or e}") from None
    if pooled is not None:
        report["replicates"] = pooled
    report.update(parent_run_id=parent.info.run_id, experiment_id=parent.info.experiment_id, points_digest=digest)
    plots = write_plots(report, objs, out)
    text = json.dumps(json_safe(report), indent=2, default=float, allow_nan=False)
    storage.write_bytes(str(out / REPORT_NAME), text.encode())  # whole or not at all
    if log:
        for f in [*plots, out / REPORT_NAME]:
            client.log_artifact(
                parent.info.run_id, str(f), artifact_path=POOLED_ARTIFACT_DIR if pooled else ARTIFACT_DIR
            )
        log_law_metrics(
            client, parent.info.run_id, report[f"{metric}_law"], f"fit.pooled.{metric}" if pooled else f"fit.{metric}"
        )
    return report, out, plots


def log_law_metrics(client: Any, run_id: str, law: dict, prefix: str) -> None:
    """The law's parameters and held-out error as metrics `<prefix>.<name>`. A value this fit has not (its law
    failed, its held-out check was skipped) is logged as NaN, so the run's latest value is never an earlier fit's."""
    from pipelines.infra import tracking

    names = list(law.get("params") or (("A", "beta", "FID_inf") if prefix.endswith(".fid") else ()))
    values = {f"{prefix}.{k}": (law.get("params") or {}).get(k, float("nan")) for k in names}
    values[f"{prefix}.held_out_rel_error"] = (law.get("held_out") or {}).get("rel_error", float("nan"))
    tracking.log_metrics(client, run_id, {k: float("nan") if v is None else v for k, v in values.items()}, 0, nan=True)


__all__ = [
    "ARTIFACT_DIR",
    "CONVENTION",
    "PLOTS",
    "POOLED_ARTIFACT_DIR",
    "REPORT_NAME",
    "fit_all",
    "fit_points",
    "json_safe",
    "points_digest",
    "run_fit",
]
