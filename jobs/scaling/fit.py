"""`ditscale fit`: scaling-law fits of a sweep's MLflow record, with plots and a JSON report.

Reads every trial's `points.json` (child runs of the sweep's parent run), fits
FID(C) = A * C^-beta + FID_inf on the compute-efficient frontier and per model, the validation-loss
law L(C) = A * C^-alpha + L_inf, and N*(C) = k * C^a from isoFLOP minima, all with bootstrap
intervals and a held-out check; writes PNGs + fit_report.json and logs them to the parent run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ditcore.scaling import FitError, PowerLawFit, compute_frontier, fit_fid_law, fit_loss_law, isoflop_analysis
from ditcore.scaling.frontier import budget_of, compute_of
from pipelines.infra.tracking import add_sweep_source_arguments

CONVENTION = "compute C = training FLOPs (multiply-add = 2 FLOPs, training step = 3 x forward FLOPs)"
REPORT_NAME = "fit_report.json"
ARTIFACT_DIR = "fit"
PLOTS = ("fid_vs_compute.png", "loss_vs_compute.png", "isoflop.png", "n_opt_vs_compute.png")


def _finite(v: Any) -> float | None:
    """v as a finite float, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _clean_points(points: list[dict]) -> list[dict]:
    """Validate points: each needs a model name and a positive compute ("flops" or "budget_flops")."""
    if not isinstance(points, list):
        raise FitError(f"points must be a list of dicts, got {type(points).__name__}")
    out = []
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise FitError(f"point {i} is not a dict: {p!r}")
        where = f"point {i}" + (f" (run {p['run_id']})" if p.get("run_id") else "")
        c = compute_of(p)
        if c is None or c <= 0:
            raise FitError(f"{where}: needs a positive 'flops' or 'budget_flops', got flops={p.get('flops')!r} "
                           f"budget_flops={p.get('budget_flops')!r}")
        out.append({**p, "model": str(p.get("model") or f"N={p.get('params')}")})
    return out


def _frontier_rows(front: list[dict]) -> list[dict]:
    """The JSON view of frontier points."""
    keys = ("model", "params", "flops", "budget_flops", "step", "fid", "val_loss", "checkpoint", "run_id")
    return [{k: p.get(k) for k in keys if k in p} for p in front]


def _law(fit_fn, xs: list[float], ys: list[float], what: str, **kw: Any) -> tuple[dict, PowerLawFit | None]:
    """(law dict or {"error": ...}, fit object or None)."""
    try:
        fit = fit_fn(xs, ys, **kw)
    except FitError as e:
        return {"error": f"{what}: {e}"}, None
    return fit.to_dict(), fit


def _fit_all(points: list[dict], *, metric: str = "fid", n_boot: int = 200, seed: int = 0) -> tuple[dict, dict]:
    """(JSON report, fit objects for plotting) of a sweep's points."""
    pts = _clean_points(points)
    with_metric = [p for p in pts if _finite(p.get(metric)) is not None]
    fid_front = compute_frontier(pts, metric)
    if len({budget_of(p) for p in fid_front}) < 3:
        raise FitError(
            f"need {metric!r} at >= 3 distinct compute budgets to fit {metric.upper()}(C) = A * C^-beta + "
            f"{metric.upper()}_inf; got {len(with_metric)} point(s) with {metric!r} at "
            f"{len({budget_of(p) for p in with_metric})} budget(s) ({len(pts)} points in total)"
        )
    kw = {"n_boot": n_boot, "seed": seed}
    fid_names = ("A", "beta", f"{metric.upper()}_inf" if metric != "fid" else "FID_inf")
    from ditcore.scaling.powerlaw import fit_power_law

    def fid_fit(xs, ys, **k):
        return fit_power_law(xs, ys, names=fid_names, **k)

    fid_law, fid_obj = _law(fid_fit, [compute_of(p) for p in fid_front], [float(p[metric]) for p in fid_front],
                            f"{metric} frontier", **kw)
    loss_front = compute_frontier(pts, "val_loss")
    loss_law, loss_obj = _law(fit_loss_law, [compute_of(p) for p in loss_front],
                              [float(p["val_loss"]) for p in loss_front], "val_loss frontier", **kw)

    models: dict[str, float | None] = {}
    for p in pts:
        models.setdefault(p["model"], _finite(p.get("params")))
    per_model, per_model_obj = {}, {}
    for name in sorted(models, key=lambda m: (models[m] or 0, m)):
        mp = [p for p in pts if p["model"] == name]
        fm = [p for p in mp if _finite(p.get(metric)) is not None]
        lm = [p for p in mp if _finite(p.get("val_loss")) is not None]
        fl, fo = _law(fid_fit, [compute_of(p) for p in fm], [float(p[metric]) for p in fm], f"{name} {metric}", **kw)
        ll, _ = _law(fit_loss_law, [compute_of(p) for p in lm], [float(p["val_loss"]) for p in lm],
                     f"{name} val_loss", **kw)
        per_model[name] = {"params": models[name], "n_points": len(mp), f"{metric}_law": fl, "loss_law": ll}
        per_model_obj[name] = fo

    iso: dict[str, Any] = {}
    iso_obj: dict[str, Any] = {}
    for m in (metric, "val_loss"):
        try:
            res = isoflop_analysis(pts, m, return_samples=True, **kw)
            iso_obj[m] = res
            res = {**res, "n_opt_law": {k: v for k, v in res["n_opt_law"].items() if k != "samples"}}
        except FitError as e:
            res = {"error": f"isoFLOP on {m}: {e}"}
        iso[m] = res

    report = {
        "convention": CONVENTION,
        "metric": metric,
        "n_points": len(pts),
        "n_points_with_metric": len(with_metric),
        "n_trials": len({p.get("run_id") for p in pts if p.get("run_id")}),
        "models": models,
        "budgets": sorted({budget_of(p) for p in pts}),
        "frontier": _frontier_rows(fid_front),
        f"{metric}_law": fid_law,
        "loss_frontier": _frontier_rows(loss_front),
        "loss_law": loss_law,
        "per_model": per_model,
        "isoflop": iso,
        "n_boot": n_boot,
        "seed": seed,
    }
    objs = {"fid": fid_obj, "loss": loss_obj, "per_model": per_model_obj, "isoflop": iso_obj, "points": pts,
            "fid_front": fid_front, "loss_front": loss_front}
    return report, objs


def fit_points(points: list[dict], *, metric: str = "fid", n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """All fits of a sweep's points (no MLflow needed); JSON-ready report. FitError if too few points.

    Keys: convention, metric, n_points, n_points_with_metric, n_trials, models {name: params},
    budgets, frontier [points], fid_law, loss_frontier, loss_law, per_model {name: {params,
    n_points, fid_law, loss_law}}, isoflop {fid: ..., val_loss: ...}, n_boot, seed. A law is
    {form, params, ci, ci_level, n_points, dof, n_boot, n_boot_ok, rmse_log, compute_range,
    held_out} or {"error": reason} when it cannot be fitted.
    """
    return _fit_all(points, metric=metric, n_boot=n_boot, seed=seed)[0]


def write_plots(report: dict, objs: dict, out_dir: str | os.PathLike) -> list[Path]:
    """PNG plots: FID and loss vs compute (per-model curves, frontier fit and band), isoFLOP curves, N* vs C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pts, metric = objs["points"], report["metric"]
    models = sorted(report["models"], key=lambda m: (report["models"][m] or 0, m))
    colors = {m: plt.cm.viridis(i / max(1, len(models) - 1)) for i, m in enumerate(models)}
    written = []

    def vs_compute(key: str, fit: PowerLawFit | None, front: list[dict], fname: str, ylabel: str) -> None:
        fig, ax = plt.subplots(figsize=(7, 5))
        for m in models:
            mp = sorted((p for p in pts if p["model"] == m and _finite(p.get(key)) is not None), key=compute_of)
            if mp:
                ax.plot([compute_of(p) for p in mp], [float(p[key]) for p in mp], "o-", color=colors[m], alpha=0.7,
                        label=f"{m} (N={report['models'][m]:.3g})" if report["models"][m] else m)
        if front:
            ax.plot([compute_of(p) for p in front], [float(p[key]) for p in front], "k*", ms=12, label="frontier")
        if fit is not None:
            lo, hi = fit.compute_range
            cs = np.logspace(np.log10(lo) - 0.2, np.log10(hi) + 0.5, 200)
            if fit.ci:  # a band only where the bootstrap gave intervals
                blo, bhi = fit.band(cs)
                ax.fill_between(cs, blo, bhi, color="tab:red", alpha=0.2,
                                label=f"{int(fit.ci_level * 100)}% bootstrap band")
            ax.plot(cs, fit.predict(cs), "r--", label=fit.formula().split("  with")[0] + "\n" + fit.formula().split("with  ")[1])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C (MAC = 2 FLOPs, train = 3 x forward)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(out / fname)

    vs_compute(metric, objs["fid"], objs["fid_front"], PLOTS[0], metric.upper())
    vs_compute("val_loss", objs["loss"], objs["loss_front"], PLOTS[1], "validation loss")

    iso = objs["isoflop"].get(metric) or objs["isoflop"].get("val_loss")
    fig, ax = plt.subplots(figsize=(7, 5))
    if iso is not None:
        cmap = plt.cm.plasma
        for i, b in enumerate(iso["budgets"]):
            col = cmap(i / max(1, len(iso["budgets"]) - 1))
            ns, ys = np.array(b["params"]), np.array(b[iso["metric"]])
            ax.plot(ns, ys, "o", color=col, label=f"C={b['budget_flops']:.2e}")
            xs = np.linspace(np.log(ns.min()), np.log(ns.max()), 100)
            ax.plot(np.exp(xs), np.polyval(b["coef"], xs), "-", color=col, alpha=0.7)
            ax.plot([b["n_opt"]], [b["metric_opt"]], "kx", ms=10)
        ax.set_ylabel(iso["metric"])
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "isoFLOP analysis needs >= 2 budgets x >= 3 model sizes", ha="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_title("isoFLOP curves (x: parabola minimum N*)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / PLOTS[2], dpi=110)
    plt.close(fig)
    written.append(out / PLOTS[2])

    fig, ax = plt.subplots(figsize=(7, 5))
    if iso is not None:
        law = iso["n_opt_law"]
        cs = np.array([b["budget_flops"] for b in iso["budgets"]])
        ax.plot(cs, [b["n_opt"] for b in iso["budgets"]], "ko", label="isoFLOP minima N*")
        grid = np.logspace(np.log10(cs.min()) - 0.2, np.log10(cs.max()) + 0.5, 100)
        k, a = law["params"]["k"], law["params"]["a"]
        ax.plot(grid, k * grid ** a, "r--", label=f"N* = {k:.3g} * C^{a:.3f}")
        if law.get("ci"):
            s = np.array(law["samples"])
            preds = s[:, :1] * grid[None, :] ** s[:, 1:2]
            lo, hi = np.percentile(preds, [100 * (1 - law["ci_level"]) / 2, 100 * (1 + law["ci_level"]) / 2], axis=0)
            ax.fill_between(grid, lo, hi, color="tab:red", alpha=0.2, label="bootstrap band")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no isoFLOP minima", ha="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("compute-optimal parameters N*")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / PLOTS[3], dpi=110)
    plt.close(fig)
    written.append(out / PLOTS[3])
    return written


def _fmt_ci(law: dict, name: str) -> str:
    """'x [lo, hi]' for one parameter of a law dict."""
    v = law["params"][name]
    ci = law.get("ci", {}).get(name)
    return f"{name} = {v:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else " [no interval]")


def format_laws(report: dict) -> str:
    """The fitted laws with their intervals and held-out checks, as printable text."""
    metric = report["metric"]
    lines = [f"# {report['n_points']} points, {len(report['models'])} models, {len(report['budgets'])} budgets; "
             f"{CONVENTION}"]

    def law_lines(title: str, law: dict) -> None:
        if "error" in law:
            lines.append(f"{title}: not fitted ({law['error']})")
            return
        level = int(round(law.get("ci_level", 0.95) * 100))
        lines.append(f"{title}: {law['form']}   ({law['n_points']} points, {level}% bootstrap CI, "
                     f"{law['n_boot_ok']}/{law['n_boot']} resamples)")
        lines.append("    " + ", ".join(_fmt_ci(law, n) for n in law["params"]))
        if law.get("dof", 1) <= 0:
            lines.append("    warning: exact fit (no degrees of freedom); intervals are not meaningful")
        ho = law.get("held_out")
        if ho and "skipped" not in ho:
            lines.append(f"    held-out (fit without C={ho['compute']:.3g}): predicted {ho['predicted']:.4g}, "
                         f"observed {ho['observed']:.4g}, error {ho['abs_error']:.4g} ({100 * ho['rel_error']:.1f}%)")
        elif ho:
            lines.append(f"    held-out: skipped ({ho['skipped']})")

    law_lines(f"{metric.upper()} frontier", report[f"{metric}_law"])
    law_lines("val-loss frontier", report["loss_law"])
    for m in (metric, "val_loss"):
        iso = report["isoflop"].get(m, {})
        if "error" in iso:
            lines.append(f"N*(C) from {m} isoFLOPs: not fitted ({iso['error']})")
        else:
            law = iso["n_opt_law"]
            note = "" if law["all_interior"] else "  (some minima at the grid edge)"
            lines.append(f"N*(C) from {m} isoFLOPs: {law['form']}   ({law['n_budgets']} budgets){note}")
            lines.append("    " + ", ".join(_fmt_ci(law, n) for n in law["params"]))
    for name, pm in report["per_model"].items():
        law = pm[f"{metric}_law"]
        if "error" not in law:
            lines.append(f"  {name}: {metric.upper()} = " + ", ".join(_fmt_ci(law, n) for n in law["params"]))
    return "\n".join(lines)


def run_fit(*, experiment: str | None = None, parent_run_id: str | None = None, tracking_uri: str | None = None,
            out_dir: str | None = None, metric: str = "fid", n_boot: int = 200, seed: int = 0,
            log: bool = True) -> tuple[dict, Path]:
    """Read the sweep from MLflow, fit, write plots + report to out_dir, log them to the parent run."""
    from pipelines.infra.tracking import get_client, sweep_points

    client = get_client(tracking_uri)
    parent, points = sweep_points(client, experiment=experiment, parent_run_id=parent_run_id)
    if not points:
        raise FitError(f"sweep run {parent.info.run_id} has no trial points yet (no child run logged points.json)")
    report, objs = _fit_all(points, metric=metric, n_boot=n_boot, seed=seed)
    report["parent_run_id"] = parent.info.run_id
    report["experiment_id"] = parent.info.experiment_id
    out = Path(out_dir or Path("fit_reports") / (experiment or parent.info.run_id)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, objs, out)
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2, default=float))
    if log:
        for f in [*plots, out / REPORT_NAME]:
            client.log_artifact(parent.info.run_id, str(f), artifact_path=ARTIFACT_DIR)
        law = report[f"{metric}_law"]
        if "error" not in law:
            for k, v in law["params"].items():
                client.log_metric(parent.info.run_id, f"fit.{metric}.{k}", float(v))
            ho = law.get("held_out") or {}
            if "rel_error" in ho:
                client.log_metric(parent.info.run_id, f"fit.{metric}.held_out_rel_error", float(ho["rel_error"]))
    return report, out


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale fit`."""
    p = argparse.ArgumentParser(prog="ditscale fit", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_sweep_source_arguments(p)
    p.add_argument("--out", default=None, help="output directory (default: fit_reports/<experiment or run id>)")
    p.add_argument("--metric", default="fid", help="point metric to fit (points.json key)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per fit")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ditscale fit`."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    from pipelines.infra.tracking import ExperimentRecordError, TrackingURIError

    try:
        report, out = run_fit(experiment=args.experiment, parent_run_id=args.parent_run,
                              tracking_uri=args.tracking_uri, out_dir=args.out, metric=args.metric,
                              n_boot=args.n_boot, seed=args.seed, log=not args.no_log)
    except (FitError, ExperimentRecordError, TrackingURIError) as e:
        print(f"ditscale fit: error: {e}", file=sys.stderr)
        return 2
    print(format_laws(report))
    print(f"wrote {out / REPORT_NAME} and {len(PLOTS)} plots to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
