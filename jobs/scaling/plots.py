"""Plots of a fit report: metric and validation loss vs compute (per model, frontier fit with its band), isoFLOP
curves with their minima, and the compute-optimal model size N*(C)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ditcore.scaling import PowerLawFit
from ditcore.scaling.frontier import compute_of, interior_count, minimum_kind

PLOTS = ("fid_vs_compute.png", "loss_vs_compute.png", "isoflop.png", "n_opt_vs_compute.png")
ARMS_PLOT = "arms_vs_compute.png"  # written when the points come from >= 2 architecture arms
XLABEL = "training FLOPs C (MAC = 2 FLOPs, train = 3 x forward)"


def finite_or_none(v: Any) -> float | None:
    """`v` as a finite float, else None (missing, not a number, NaN or infinite)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _minor_log_label(x: float, _pos: Any) -> str:
    """2 x 10^k and 5 x 10^k; the other minor ticks unlabelled."""
    e = math.floor(math.log10(x) + 1e-9)
    m = round(x / 10**e)
    return f"${m}\\times10^{{{e}}}$" if m in (2, 5) else ""


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.ticker import FuncFormatter

    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        # Under two decades matplotlib labels the minor ticks 2, 3, 4 and 6 x 10^k, whose labels overlap.
        if ax.get_xscale() == "log" and 0 < lo < hi < 100 * lo:
            ax.xaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_vs_compute(
    points: list[dict],
    models: dict[str, float | None],
    key: str,
    fit: PowerLawFit | None,
    front: list[dict],
    path: Path,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """`key` vs training compute: one curve per model, the frontier points, the fitted law and its band."""
    plt = _pyplot()
    names = sorted(models, key=lambda m: (models[m] or 0, m))
    colors = {m: plt.cm.viridis(i / max(1, len(names) - 1)) for i, m in enumerate(names)}
    fig, ax = plt.subplots(figsize=(7, 5))
    for m in names:
        mp = sorted((p for p in points if p["model"] == m and finite_or_none(p.get(key)) is not None), key=compute_of)
        if mp:
            ax.plot(
                [compute_of(p) for p in mp],
                [float(p[key]) for p in mp],
                "o-",
                color=colors[m],
                alpha=0.7,
                label=f"{m} (N={models[m]:.3g})" if models[m] else m,
            )
    if front:
        ax.plot([compute_of(p) for p in front], [float(p[key]) for p in front], "k*", ms=12, label="frontier")
    if fit is not None:
        lo, hi = fit.compute_range
        cs = np.logspace(np.log10(lo) - 0.2, np.log10(hi) + 0.5, 200)
        if fit.ci:  # a band only where the bootstrap gave intervals
            blo, bhi = fit.band(cs)
            ax.fill_between(
                cs, blo, bhi, color="tab:red", alpha=0.2, label=f"{int(fit.ci_level * 100)}% bootstrap band"
            )
        form, _, params = fit.formula().partition("  with  ")
        ax.plot(cs, fit.predict(cs), "r--", label=f"{form.strip()}\n{params.strip()}")
    ax.set(xscale="log", yscale="log", xlabel=XLABEL, ylabel=ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _one(points: list[dict], field: str) -> Any:
    """The value of `field` shared by every point that has it; None when they differ or none has it."""
    seen = {str(p[field]) for p in points if p.get(field) not in (None, "")}
    return next(iter(seen)) if len(seen) == 1 else None


def metric_label(points: list[dict], metric: str) -> str:
    """The axis label of `metric`: for FID, the sample count and the feature network when every point shares them
    (an FID states its network and sample count)."""
    if metric != "fid":
        return metric.upper()
    samples, dim, net = (_one(points, f) for f in ("fid_samples", "fid_feature_dim", "fid_network"))
    where = "/".join(Path(net.rstrip("/")).parts[-2:]) if net else None  # the network's name and its parent
    network = ", ".join(x for x in (where, f"{dim}-d" if dim else None) if x)
    parts = [f"{samples} samples" if samples else None, f"network: {network}" if network else None]
    inner = "; ".join(p for p in parts if p)
    return f"FID ({inner})" if inner else "FID"


def law_title(law: dict | None, name: str, replicates: dict | None = None) -> str | None:
    """`name = value [lo, hi] (95%)` of the law's exponent, its held-out error, the same with the floor free when
    the floor's bound binds, and how many sweeps each point averages; None without a fitted law."""
    if not law or "error" in law or name not in (law.get("params") or {}):
        return None
    value = law["params"][name]
    ci = (law.get("ci") or {}).get(name)
    text = f"{name} = {value:.3g}"
    if ci and all(finite_or_none(c) is not None for c in ci):
        text += f" [{ci[0]:.3g}, {ci[1]:.3g}] ({int(round(100 * law.get('ci_level', 0.95)))}%)"
    held = law.get("held_out") or {}
    if finite_or_none(held.get("rel_error")) is not None:
        text += f", held-out error {100 * held['rel_error']:.1f}% at C = {held['compute']:.3g}"
    fb = law.get("floor_bound") or {}
    if fb.get("binds"):  # the plot says what the docs and report say: these numbers rest on the floor's bound
        floor, free = list(law["params"])[-1], fb["free"]
        free_ci = (free.get("ci") or {}).get(name)
        text += f"\n{floor} at its bound (the lowest value); floor free: {name} = {free['params'][name]:.3g}"
        text += f" [{free_ci[0]:.3g}, {free_ci[1]:.3g}]" if free_ci else ""
        if free.get("held_out_rel_error") is not None:
            text += f", held-out error {100 * free['held_out_rel_error']:.1f}%"
    if replicates and replicates.get("n_sweeps", 1) > 1:
        text += f"\neach point the mean of {replicates['n_sweeps']} sweeps (seed replicates)"
    return text


def metric_axis(points: list[dict], metric: str) -> str:
    """The axis label of a fitted metric: the FID's (metric_label), the validation loss by name."""
    return "validation loss" if metric == "val_loss" else metric_label(points, metric)


def n_opt_title(iso: dict) -> str:
    """What the N*(C) plot shows: the exponent with its interval, the metric whose isoFLOP minima it fits, and how
    many of those minima the grid brackets (the others are bounds)."""
    law = iso.get("n_opt_law") or {}
    name = "validation-loss" if iso["metric"] == "val_loss" else iso["metric"].upper()
    exponent = law_title(law, "a") or "no N*(C) fit"
    interior = interior_count(iso["budgets"])[0]
    return (
        f"N*(C) = k * C^a from {name} isoFLOP minima: {exponent}\n{interior} of {len(iso['budgets'])} minima interior"
    )


def plot_isoflop(iso: dict | None, path: Path, ylabel: str | None = None) -> Path:
    """Per-budget metric vs parameters with the fitted parabolas and their minima N*; `ylabel` (default: the
    metric's name) labels the metric axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.2, 5))
    if iso is not None:
        values = np.concatenate([np.asarray(b[iso["metric"]], float) for b in iso["budgets"]])
        if values.min() > 0 and values.max() > 10 * values.min():
            # FID falls by an order of magnitude across budgets: on a linear axis the largest budgets' curves, where
            # the minima matter most, lie flat along the bottom.
            ax.set_yscale("log")
        for i, b in enumerate(iso["budgets"]):
            col = plt.cm.plasma(i / max(1, len(iso["budgets"]) - 1))
            ns, ys = np.array(b["params"]), np.array(b[iso["metric"]])
            ax.plot(ns, ys, "o", color=col, label=f"C={b['budget_flops']:.2e}")
            xs = np.linspace(*b["fit_range"], 100)  # the sizes the parabola describes ("local": the best's neighbours)
            ax.plot(np.exp(xs), np.polyval(b["coef"], xs), "-", color=col, alpha=0.7)
            edge = b.get("method") == "edge"  # the best measured size at the grid's edge: a bound, not a vertex
            ax.plot([b["n_opt"]], [b["metric_opt"]], "k^" if edge else "kx", ms=9 if edge else 10, mfc="none")
        ax.set_ylabel(ylabel or iso["metric"])
        # Beside the axes: inside, it covered the smallest size's points, where the edge minima lie.
        ax.legend(fontsize=7, title="budget", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "isoFLOP analysis needs >= 2 budgets x >= 3 model sizes", ha="center", transform=ax.transAxes)
    ax.set(
        xscale="log",
        xlabel="parameters N",
        title="isoFLOP curves\nx: parabola minimum N*; open triangle: best size at the grid's edge (a bound)",
    )
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_n_opt(iso: dict | None, path: Path) -> Path:
    """The isoFLOP minima N* vs compute with the fitted N*(C) = k C^a and its bootstrap band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    if iso is not None:
        law = iso["n_opt_law"]
        cs = np.array([b["budget_flops"] for b in iso["budgets"]])
        # interior minima are estimates; at the grid's edge N* is only a bound (the optimum may lie beyond)
        kinds = {
            "interior": ("ko", "isoFLOP minima N*"),
            "smallest": ("kv", "bound: smallest size best (N* <=)"),
            "largest": ("k^", "bound: largest size best (N* >=)"),
        }
        for kind, (style, label) in kinds.items():
            rows = [b for b in iso["budgets"] if minimum_kind(b) == kind]
            if rows:
                ax.plot(
                    [b["budget_flops"] for b in rows],
                    [b["n_opt"] for b in rows],
                    style,
                    mfc="k" if kind == "interior" else "none",
                    label=f"{label} ({len(rows)})",
                )
        grid = np.logspace(np.log10(cs.min()) - 0.2, np.log10(cs.max()) + 0.5, 100)
        k, a = law["params"]["k"], law["params"]["a"]
        ax.plot(grid, k * grid**a, "r--", label=f"N* = {k:.3g} * C^{a:.3f}")
        if law.get("ci") and law.get("samples") is not None:
            s = np.array(law["samples"])
            preds = s[:, :1] * grid[None, :] ** s[:, 1:2]
            q = 100 * (1 - law["ci_level"]) / 2
            lo, hi = np.percentile(preds, [q, 100 - q], axis=0)
            ax.fill_between(grid, lo, hi, color="tab:red", alpha=0.2, label="bootstrap band")
        ax.legend(fontsize=8)
        ax.set_title(n_opt_title(iso), fontsize=9)
    else:
        ax.text(0.5, 0.5, "no isoFLOP minima", ha="center", transform=ax.transAxes)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="compute-optimal parameters N*")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_arms(points: list[dict], key: str, comparison: dict, fits: dict, path: Path) -> Path:
    """Every arm's points, compute frontier and fitted law (with its band) on one set of axes, and the crossing."""
    plt = _pyplot()
    arms = sorted({str(p["arm"]) for p in points if p.get("arm")})
    fig, ax = plt.subplots(figsize=(7, 5))
    cs_all = [compute_of(p) for p in points if finite_or_none(p.get(key)) is not None]
    lo, hi = (min(cs_all), max(cs_all)) if cs_all else (1.0, 10.0)
    grid = np.logspace(np.log10(lo) - 0.2, np.log10(hi) + 0.2, 200)
    for i, arm in enumerate(arms):
        col = plt.cm.tab10(i % 10)
        mp = [p for p in points if p.get("arm") == arm and finite_or_none(p.get(key)) is not None]
        ax.plot([compute_of(p) for p in mp], [float(p[key]) for p in mp], "o", color=col, alpha=0.25, ms=4)
        info = (comparison.get("arms") or {}).get(arm) or {}
        if arm not in fits:
            ax.plot([], [], "o", color=col, label=f"{arm}: not fitted ({info.get('error', 'no fit')})"[:90])
            continue
        fit, front = fits[arm]
        ax.plot([compute_of(p) for p in front], [float(p[key]) for p in front], "*", color=col, ms=12)
        if fit.samples is not None and fit.ci:
            blo, bhi = fit.band(grid)
            ax.fill_between(grid, blo, bhi, color=col, alpha=0.15)
        ci = info.get("beta_ci")
        ci_txt = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
        ax.plot(grid, fit.predict(grid), "--", color=col, label=f"{arm} frontier: beta = {fit.exponent:.3g}{ci_txt}")
    for x in comparison.get("crossings") or []:
        if not (x.get("exists") and x.get("compute")):
            continue
        later = x.get("later_crossings", [])
        marks = [(x["compute"], x["leader_after"])] + [(c["compute"], c["leader_after"]) for c in later]
        for c, leader in marks:
            if grid[0] <= c <= grid[-1]:
                ax.axvline(c, color="k", ls=":", label=f"crossing C = {c:.3g} ({leader} lower after)")
    ax.set(xscale="log", yscale="log", xlabel=XLABEL, ylabel=key.upper(), title="architecture arms (*: frontier)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_plots(report: dict, objs: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Every plot of a fit report (PLOTS, and ARMS_PLOT for an arms sweep) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric, models = report["metric"], report["models"]
    iso = objs["isoflop"].get(metric) or objs["isoflop"].get("val_loss")
    extra = []
    if report.get("arm_comparison") and "error" not in report["arm_comparison"]:
        extra.append(
            plot_arms(objs["points"], metric, report["arm_comparison"], objs.get("arm_fits") or {}, out / ARMS_PLOT)
        )
    reps = report.get("replicates")
    return extra + [
        plot_vs_compute(
            objs["points"],
            models,
            metric,
            objs["fid"],
            objs["fid_front"],
            out / PLOTS[0],
            metric_axis(objs["points"], metric),
            law_title(report.get(f"{metric}_law"), "beta", reps),
        ),
        plot_vs_compute(
            objs["points"],
            models,
            "val_loss",
            objs["loss"],
            objs["loss_front"],
            out / PLOTS[1],
            metric_axis(objs["points"], "val_loss"),
            law_title(report.get("loss_law"), "alpha", reps),
        ),
        plot_isoflop(iso, out / PLOTS[2], metric_axis(objs["points"], iso["metric"]) if iso else None),
        plot_n_opt(iso, out / PLOTS[3]),
    ]
