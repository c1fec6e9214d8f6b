"""Text views of a sweep's fit: the laws with their intervals and held-out checks, one-sentence law, the point table.

Used by `ditscale fit`, `ditscale report` and the quickstart's report, so the same law reads the same everywhere.
"""

from __future__ import annotations

from typing import Any

from jobs.scaling.fit import CONVENTION


def _fmt_ci(law: dict, name: str) -> str:
    """'x [lo, hi]' for one parameter of a law dict."""
    v = law["params"][name]
    ci = law.get("ci", {}).get(name)
    return f"{name} = {v:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else " [no interval]")


def format_laws(report: dict) -> str:
    """The fitted laws with their intervals and held-out checks, as printable text."""
    metric = report["metric"]
    lines = [
        f"# {report['n_points']} points, {len(report['models'])} models, {len(report['budgets'])} budgets; {CONVENTION}"
    ]
    reps = report.get("replicates")
    if reps:
        left = f", {reps['points_dropped']} left out (not in every sweep)" if reps.get("points_dropped") else ""
        lines.append(
            f"# each point the mean over {reps['n_sweeps']} sweeps of the same grid ({', '.join(reps['sweeps'])}){left}"
        )

    def law_lines(title: str, law: dict) -> None:
        if "error" in law:
            lines.append(f"{title}: not fitted ({law['error']})")
            return
        level = int(round(law.get("ci_level", 0.95) * 100))
        method = ci_method_name(law)
        lines.append(f"{title}: {law['form']}   ({law['n_points']} points, {level}% {method} CI)")
        lines.append("    " + ", ".join(_fmt_ci(law, n) for n in law["params"]))
        if law.get("dof", 1) <= 0:
            lines.append("    warning: exact fit (no degrees of freedom); intervals are not meaningful")
        ho = law.get("held_out")
        if ho and "skipped" not in ho:
            lines.append(
                f"    held-out (fit without C={ho['compute']:.3g}): predicted {ho['predicted']:.4g}, "
                f"observed {ho['observed']:.4g}, error {ho['abs_error']:.4g} ({100 * ho['rel_error']:.1f}%)"
            )
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
            d_law = iso.get("d_opt_law") or {}
            if "params" in d_law:
                lines.append(f"D*(C) (images at the optimum) from {m} isoFLOPs: {d_law.get('form', 'D* = k * C^b')}")
                lines.append("    " + ", ".join(_fmt_ci(d_law, n) for n in d_law["params"]))
    for name, pm in report["per_model"].items():
        law = pm[f"{metric}_law"]
        if "error" not in law:
            lines.append(f"  {name}: {metric.upper()} = " + ", ".join(_fmt_ci(law, n) for n in law["params"]))
    lines += arms_lines(report)
    diagnostics = report.get("diagnostics") or []
    if diagnostics:
        lines.append("What the data do not support:")
        lines += [f"  - {d['message']}" for d in diagnostics]
    return "\n".join(lines)


def arms_lines(report: dict) -> list[str]:
    """Architecture arms side by side (exponent with its interval) and each pair's crossing sentence."""
    comparison = report.get("arm_comparison") or {}
    arms = comparison.get("arms") or {}
    if not arms and "error" not in comparison:
        return []
    metric = report["metric"].upper()
    lines = [f"Architecture arms: {metric}(C) = A * C^-beta + {metric}_inf on each arm's own compute frontier"]
    if "error" in comparison:
        return lines + [f"  not fitted ({comparison['error']})"]
    for arm, a in arms.items():
        if "error" in a:
            lines.append(f"  {arm}: not fitted ({a['error']})")
            continue
        ci = a.get("beta_ci")
        ci_txt = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else " [no interval]"
        lo, hi = a["compute_range"]
        lines.append(
            f"  {arm}: beta = {a['beta']:.4g}{ci_txt}, {a['n_frontier']} frontier points, C in [{lo:.3g}, {hi:.3g}]"
        )
    for x in comparison.get("crossings") or []:
        d = x.get("exponent_difference") or {}
        if d.get("ci"):
            a, b = x["arms"]
            lines.append(f"  beta({a}) - beta({b}) = {d['value']:.4g} [{d['ci'][0]:.4g}, {d['ci'][1]:.4g}]")
        lines.append(f"  {x['statement']}")
    return lines


def ci_method_name(law: dict) -> str:
    """How a fitted law's intervals were computed, in words ("profile-likelihood" or "bootstrap")."""
    return {"profile": "profile-likelihood"}.get(law.get("ci_method"), "bootstrap")


def law_sentence(law: dict) -> str:
    """'FID(C) = A * C^-beta + FID_inf with A = .. [lo, hi], ...' from a fitted law dict."""
    parts = []
    for name, v in law["params"].items():
        ci = law.get("ci", {}).get(name)
        parts.append(f"{name} = {v:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""))
    level = int(round(law.get("ci_level", 0.95) * 100))
    form = law["form"] if "=" in law["form"] else f"FID(C) = {law['form']}"
    if law.get("dof", 1) <= 0:
        # 3 frontier points for 3 parameters: the fit is exact and a bootstrap has nothing to resample.
        return (
            f"{form} with " + ", ".join(parts) + f" (exact fit through {law.get('n_points')} frontier points: "
            "no interval; intervals need >= 4 distinct budgets; C in training FLOPs)"
        )
    fb, floor = law.get("floor_bound") or {}, list(law["params"])[-1]
    bound = (
        f"; {floor} at its bound, the lowest value measured, which the fit without that bound puts "
        f"at {fb['free']['params'][floor]:.4g}"
        if fb.get("binds")
        else ""
    )
    return (
        f"{form} with " + ", ".join(parts) + f" ({level}% {ci_method_name(law)} intervals; C in training FLOPs{bound})"
    )


COLUMNS = ("model", "params", "budget", "FLOPs", "FID", "val loss", "checkpoint")


def _fmt(v: Any, spec: str) -> str:
    """Format a number, or '-' for a missing value."""
    if v is None:
        return "-"
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def trial_table(points: list[dict], metric: str = "fid") -> str:
    """Text table of points by model size, then compute: model, params, budget, FLOPs, FID, val loss, checkpoint;
    another `metric` gets its own column after them (it was printed under the FID header)."""
    extra = metric not in ("fid", "val_loss")
    rows = [COLUMNS[:-1] + ((metric,) if extra else ()) + COLUMNS[-1:]]
    for p in sorted(
        points,
        key=lambda p: (
            float(p.get("params") or 0),
            str(p.get("model")),
            float(p.get("budget_flops") or 0),
            float(p.get("flops") or 0),
        ),
    ):
        rows.append(
            (
                str(p.get("model", "-")),
                _fmt(p.get("params"), ".3g"),
                _fmt(p.get("budget_flops"), ".3g"),
                _fmt(p.get("flops"), ".3g"),
                _fmt(p.get("fid"), ".3f"),
                _fmt(p.get("val_loss"), ".4f"),
                *((_fmt(p.get(metric), ".4g"),) if extra else ()),
                str(p.get("checkpoint") or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
