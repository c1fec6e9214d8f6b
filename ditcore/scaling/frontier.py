"""Compute-efficient frontier and isoFLOP analysis of a scaling grid (Hoffmann et al. 2022, §3.1-3.2).

Points are dicts of the experiment record (`points.json`): "flops" (training FLOPs consumed at
the eval point), "budget_flops" (the trial's compute budget), "params" (model size N), "model",
metrics such as "fid" / "val_loss", and for the data axis "images_seen" (or "train_flops_per_image",
from which images = flops / train_flops_per_image).

isoFLOP analysis (Hoffmann et al. 2022 approach 2): per budget, a parabola of the metric in log N gives the
optimal size N*; the images seen at N* come from a line log D = u + v log N through that budget's points
(D follows from N at fixed compute, D = C / flops_per_image(N)). N*(C) = k C^a and D*(C) = k_d C^b are lines in
log-log space through the per-budget optima, with two-level percentile-bootstrap intervals: the budgets are
resampled with replacement and, within each, the sizes are kept and the values redrawn (within their standard
errors, or about the parabola) before its optimum is found again. The budgets' scatter already carries the
within-budget noise that the second level adds again, so these intervals lean wide: on synthetic grids (true
a = 0.5, 5 budgets, 3% noise) about 1.8x the estimator's own spread, at 95% coverage. When flops_per_image is
proportional to N (the C = 6 N D rule of Kaplan et al. 2020 with D counted in images), b = 1 - a.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ditcore.scaling.powerlaw import (
    MIN_BOOT_OK,
    FitError,
    PowerLawFit,
    fit_power_law,
    noise_draw,
    sampling_noise_block,
)


def _num(p: dict, key: str) -> float | None:
    """p[key] as a finite float, else None."""
    v = p.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


# Point metrics that grow as models improve: a law A * C^-b + floor, an isoFLOP minimum and a champion all want a
# metric that falls with compute (fid, val_loss).
HIGHER_IS_BETTER = ("attr_acc", "class_acc")


def check_metric(metric: str) -> None:
    """FitError when `metric` is one that grows as models improve (the fits and the champion minimise it)."""
    if metric in HIGHER_IS_BETTER or metric.endswith("_acc"):
        raise FitError(
            f"metric {metric!r} grows as models improve; the laws, isoFLOP minima and the champion minimise a "
            "metric that falls with compute (fid, val_loss)"
        )


def compute_of(p: dict) -> float | None:
    """Training FLOPs of a point: consumed "flops", else its "budget_flops"."""
    return _num(p, "flops") if _num(p, "flops") is not None else _num(p, "budget_flops")


def images_of(p: dict) -> float | None:
    """Training images seen at a point: "images_seen", else "flops" / "train_flops_per_image", else None."""
    d = _num(p, "images_seen")
    if d is not None and d > 0:
        return d
    c, fpi = _num(p, "flops"), _num(p, "train_flops_per_image")
    return c / fpi if c is not None and fpi is not None and c > 0 and fpi > 0 else None


def budget_of(p: dict) -> float | None:
    """The isoFLOP group of a point: its "budget_flops", else its consumed "flops"."""
    return _num(p, "budget_flops") if _num(p, "budget_flops") is not None else _num(p, "flops")


def compute_frontier(points: list[dict], metric: str = "fid") -> list[dict]:
    """Min `metric` over models at each compute budget, sorted by compute (the compute-efficient frontier).

    Each budget group (key "budget_flops") contributes its best point; its x value is the FLOPs
    that point actually consumed. Points without the metric are ignored.
    """
    best: dict[float, dict] = {}
    for p in points:
        m, b, c = _num(p, metric), budget_of(p), compute_of(p)
        if m is None or b is None or c is None:
            continue
        cur = best.get(b)
        # Ties go to less compute, then to the smaller model.
        key = (m, c, _num(p, "params") or 0)
        if cur is None or key < (_num(cur, metric), compute_of(cur), _num(cur, "params") or 0):
            best[b] = p
    return [best[b] for b in sorted(best)]


def fit_parabola(log_n: Any, values: Any) -> dict[str, Any]:
    """Quadratic fit values ~ a (log N)^2 + b log N + c and its minimum N* (Chinchilla approach 2).

    When the best sampled size is the smallest or the largest, N* is that size and "interior" is False (the grid
    does not bracket the optimum), even if the parabola's vertex falls inside the range (e.g. bent there by a
    far-off largest model while the smallest size is the best measured). When the best size is bracketed by worse
    ones but the parabola over all sizes is not convex or puts its vertex outside the sampled range (a far-off size
    can bend it either way), N* is the vertex of the parabola through the best size and its nearest sampled sizes on
    either side (each at its lowest value), which lies between them. "method" says which: "parabola", "local" or
    "edge"; "coef" are the coefficients of the parabola used and "fit_range" the log N range they describe.
    """
    x = np.asarray(log_n, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
    if bad.size:  # np.argmin would pick a NaN as the optimum, and polyfit return NaN coefficients
        i = int(bad[0])
        raise FitError(f"isoFLOP parabola: point {i} is not finite (log N {x[i]:.4g}, value {y[i]:.4g})")
    if np.unique(x).size < 3:
        raise FitError(f"isoFLOP parabola needs >= 3 distinct model sizes, got {np.unique(x).size}")
    a, b, c = np.polyfit(x, y, 2)
    i = int(np.argmin(y))
    best = x[i]
    bracketed = bool(x.min() < best < x.max())
    fit_range = [float(x.min()), float(x.max())]
    method = "edge"
    if a > 0 and bracketed and x.min() <= -b / (2 * a) <= x.max():
        method = "parabola"
    elif bracketed:
        sizes = np.unique(x)
        lows = np.array([y[x == s].min() for s in sizes])
        k = int(np.searchsorted(sizes, best))
        xs, ys = sizes[k - 1 : k + 2], lows[k - 1 : k + 2]
        la, lb, lc = np.polyfit(xs, ys, 2)
        if la > 0:  # the best size is no worse than its neighbours, so the vertex lies between them
            a, b, c, method = la, lb, lc, "local"
            fit_range = [float(xs[0]), float(xs[-1])]
    if method == "edge":
        x_opt, y_opt = best, y[i]
    else:
        x_opt = -b / (2 * a)
        y_opt = c - b * b / (4 * a)
    return {
        "coef": [float(a), float(b), float(c)],
        "log_n_opt": float(x_opt),
        "n_opt": float(np.exp(x_opt)),
        "metric_opt": float(y_opt),
        "interior": method != "edge",
        "method": method,
        "fit_range": fit_range,
    }


def minimum_kind(budget: dict) -> str:
    """'interior' for an isoFLOP minimum the grid brackets, else the edge of the sampled sizes it sits at:
    'smallest' (N* is an upper bound) or 'largest' (a lower bound). `budget`: a row of isoflop_analysis."""
    if budget.get("interior", True):
        return "interior"
    # An edge minimum is one of the sizes, up to exp(log N) rounding (which can land just below the largest):
    # the nearer edge in log space is the one it sits at.
    log_n = np.log(budget["n_opt"])
    lo, hi = np.log(min(budget["params"])), np.log(max(budget["params"]))
    return "largest" if abs(log_n - hi) <= abs(log_n - lo) else "smallest"


def interior_count(budgets: list[dict]) -> list[int]:
    """[budgets whose isoFLOP minimum the sizes tried bracket, budgets]: at the rest N* is a bound (`minimum_kind`)."""
    return [sum(minimum_kind(b) == "interior" for b in budgets), len(budgets)]


def _redrawn_log_n_opt(rng: np.random.Generator, log_n: np.ndarray, values: np.ndarray, se: np.ndarray | None) -> float:
    """One bootstrap draw of a budget's log N*: its values redrawn within their standard errors when known, else
    about the budget's parabola (a residual bootstrap: the fitted values plus its residuals drawn with replacement,
    scaled by sqrt(n / (n - 3)) for the 3 fitted coefficients). The sizes stay the ones measured: resampling the
    points themselves dropped sizes, and a draw without every size on one side of the optimum put N* on the edge
    of what was left, so the spread measured which sizes were drawn, not the noise of the values."""
    if se is not None:
        return fit_parabola(log_n, values + rng.normal(0.0, 1.0, values.size) * se)["log_n_opt"]
    fitted = np.polyval(np.polyfit(log_n, values, 2), log_n)
    dof = values.size - 3
    if dof <= 0:  # three points fit exactly: no residual left to say how noisy they are
        return fit_parabola(log_n, values)["log_n_opt"]
    resid = (values - fitted) * np.sqrt(values.size / dof)
    return fit_parabola(log_n, fitted + rng.choice(resid, values.size, replace=True))["log_n_opt"]


def _loglog_line(c: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """(k, a) of N = k * C^a by least squares in log-log space."""
    a, log_k = np.polyfit(np.log(c), np.log(n), 1)
    return float(np.exp(log_k)), float(a)


def _line_law(
    c: np.ndarray,
    opt: np.ndarray,
    samples: list[tuple[float, float]],
    form: str,
    names: tuple[str, str],
    ci_level: float,
    n_boot: int,
) -> dict[str, Any]:
    """{form, params, ci, ci_level, n_boot, n_boot_ok, n_budgets} of opt = k * C^e fitted through the optima."""
    k, e = _loglog_line(c, opt)
    ci: dict[str, list[float]] = {}
    if len(samples) >= MIN_BOOT_OK:
        arr = np.array(samples)
        q = [100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2]
        ci = {names[i]: [float(v) for v in np.percentile(arr[:, i], q)] for i in range(2)}
    return {
        "form": form,
        "params": {names[0]: k, names[1]: e},
        "ci": ci,
        "ci_level": ci_level,
        "n_boot": n_boot,
        "n_boot_ok": len(samples),
        "n_budgets": int(c.size),
    }


def isoflop_analysis(
    points: list[dict],
    metric: str = "fid",
    *,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
    return_samples: bool = False,
) -> dict[str, Any]:
    """Per-budget parabola of `metric` vs log N, its minimum N*, N*(C) = k * C^a and D*(C) = k * C^b with CIs.

    Bootstrap, two levels: resample the budgets with replacement (the optima's scatter about the line), and
    within each drawn budget redraw its values: from their sampling noise when every point carries
    `<metric>_se` (e.g. fid_se), else by a residual bootstrap about the budget's parabola (the sizes stay those
    measured; a budget of exactly 3 points contributes no within-budget noise). Then refit the parabolas and the
    lines; resamples with < 2 distinct budgets are skipped, and below MIN_BOOT_OK refits no interval is given.
    Raises FitError when fewer than 2 budgets have >= 3 model sizes. D* (images seen at the optimum) needs
    images for every point used (see `images_of`); otherwise d_opt_law is {"error": reason}.
    Keys: metric, budgets [per budget: budget_flops, params, metric values, images (or None), parabola,
    n_opt, d_opt, interior], n_opt_law, d_opt_law, n_opt_exponent, n_opt_exponent_ci, d_opt_exponent,
    d_opt_exponent_ci ([lo, hi] or None), all_interior. `return_samples` adds the bootstrap (k, exponent) rows
    as <law>["samples"] (for plotting a band; not needed in reports).
    """
    groups: dict[float, list[tuple[float, float, float | None]]] = {}
    for p in points:
        m, b, n = _num(p, metric), budget_of(p), _num(p, "params")
        if m is None or b is None or n is None or n <= 0:
            continue
        groups.setdefault(b, []).append((n, m, images_of(p), _num(p, f"{metric}_se")))
    budgets = []
    draws = []  # per kept budget: (log N, values, standard errors or None), what the bootstrap redraws from
    for b in sorted(groups):
        groups[b].sort(key=lambda row: (row[0], row[1]))  # by size: the bootstrap then ignores the input order
        ns = np.array([row[0] for row in groups[b]])
        if np.unique(ns).size < 3:
            continue
        ms = np.array([row[1] for row in groups[b]])
        ds = [row[2] for row in groups[b]]
        ses = [row[3] for row in groups[b]]
        par = fit_parabola(np.log(ns), ms)
        row = {
            "budget_flops": b,
            "params": ns.tolist(),
            metric: ms.tolist(),
            "images": ds if all(d is not None for d in ds) else None,
            **par,
            "d_opt": None,
        }
        se = np.array(ses) if all(v is not None and v >= 0 for v in ses) else None
        draws.append((np.log(ns), ms, se))
        if row["images"] is not None:
            # log D is (close to) linear in log N at fixed compute: D = C / flops_per_image(N).
            row["log_d_coef"] = [float(v) for v in np.polyfit(np.log(ns), np.log(np.array(ds)), 1)]
            row["d_opt"] = float(np.exp(np.polyval(row["log_d_coef"], par["log_n_opt"])))
        budgets.append(row)
    if len(budgets) < 2:
        raise FitError(
            f"isoFLOP analysis needs >= 2 budgets with >= 3 model sizes each, got {len(budgets)} "
            f"(budgets: {sorted(groups)})"
        )
    c = np.array([r["budget_flops"] for r in budgets])
    n_opt = np.array([r["n_opt"] for r in budgets])
    has_d = all(r["d_opt"] is not None for r in budgets)

    rng = np.random.default_rng(seed)
    n_samples, d_samples = [], []
    for _ in range(n_boot):
        pick = rng.integers(0, len(budgets), len(budgets))
        if np.unique(c[pick]).size < 2:
            continue
        nb, db = [], []
        for i in pick:
            log_n = _redrawn_log_n_opt(rng, *draws[i])
            nb.append(np.exp(log_n))
            if has_d:
                db.append(np.exp(np.polyval(budgets[i]["log_d_coef"], log_n)))
        n_samples.append(_loglog_line(c[pick], np.array(nb)))
        if has_d:
            d_samples.append(_loglog_line(c[pick], np.array(db)))
    all_interior = all(r["interior"] for r in budgets)
    law = _line_law(c, n_opt, n_samples, "N*(C) = k * C^a", ("k", "a"), ci_level, n_boot)
    law["all_interior"] = all_interior
    if return_samples:
        law["samples"] = [list(s) for s in n_samples]
    out: dict[str, Any] = {
        "metric": metric,
        "budgets": budgets,
        "n_opt_law": law,
        "all_interior": all_interior,
        "n_opt_exponent": law["params"]["a"],
        "n_opt_exponent_ci": law["ci"].get("a"),
    }
    if has_d:
        d_law = _line_law(
            c, np.array([r["d_opt"] for r in budgets]), d_samples, "D*(C) = k * C^b", ("k", "b"), ci_level, n_boot
        )
        d_law["all_interior"] = all_interior
        if return_samples:
            d_law["samples"] = [list(s) for s in d_samples]
        out.update(d_opt_law=d_law, d_opt_exponent=d_law["params"]["b"], d_opt_exponent_ci=d_law["ci"].get("b"))
    else:
        missing = sum(r["images"] is None for r in budgets)
        out.update(
            d_opt_law={
                "error": f"images seen unknown at {missing} of {len(budgets)} budgets (points need "
                f"'images_seen' or 'flops' and 'train_flops_per_image')"
            },
            d_opt_exponent=None,
            d_opt_exponent_ci=None,
        )
    return out


def _floor_name(metric: str) -> str:
    """Floor parameter name of a metric's law: FID_inf, L_inf for val_loss, else METRIC_inf."""
    return {"fid": "FID_inf", "val_loss": "L_inf"}.get(metric, f"{metric.upper()}_inf")


def fit_frontier_law(
    points: list[dict],
    metric: str = "fid",
    *,
    se_key: str | None = None,
    n_noise: int = 200,
    names: tuple[str, str, str] | None = None,
    **fit_kwargs: Any,
) -> tuple[PowerLawFit, list[dict]]:
    """(law fitted on the compute frontier of `metric`, the frontier points); optional sampling-noise propagation.

    With `se_key` (e.g. "fid_se", each point's FID standard error from `ditcore.metrics.fid.fid_bootstrap`),
    every point's value is redrawn within its noise, the frontier is re-selected (the minimum over models at a
    budget is biased low by noise and can switch model) and the law refitted; the fit's `sampling_noise` then
    also has "frontier_change_rate" (share of redraws in which some budget's best model changed) and
    "n_points_with_se". Points without a finite se count as noise-free. Other keywords go to fit_power_law.
    """
    names = names or ("A", "alpha" if metric == "val_loss" else "beta", _floor_name(metric))
    front = compute_frontier(points, metric)
    if not front:
        raise FitError(f"no points with {metric!r} to build a frontier from")
    c = np.array([compute_of(p) for p in front])
    y = np.array([_num(p, metric) for p in front])
    fit = fit_power_law(c, y, names=names, **fit_kwargs)
    if se_key is None:
        return fit, front
    usable = [
        p for p in points if _num(p, metric) is not None and budget_of(p) is not None and compute_of(p) is not None
    ]
    # A fixed order, so the redraws do not depend on the order the points came in (MLflow lists runs by id).
    usable.sort(key=lambda p: (budget_of(p), compute_of(p), str(p.get("model")), _num(p, metric), _num(p, se_key) or 0))
    vals = np.array([_num(p, metric) for p in usable])
    ses = np.array([max(_num(p, se_key) or 0.0, 0.0) for p in usable])
    comp = np.array([compute_of(p) for p in usable])
    budget = np.array([budget_of(p) for p in usable])
    groups = [np.flatnonzero(budget == b) for b in np.unique(budget)]
    base_choice = np.array([g[np.argmin(vals[g])] for g in groups])

    changes = []

    def draw(rng: np.random.Generator, resample: bool) -> tuple[np.ndarray, np.ndarray]:
        v = noise_draw(vals, ses, rng)
        choice = np.array([g[np.argmin(v[g])] for g in groups])
        if not resample:
            changes.append(bool((choice != base_choice).any()))
        if resample:
            choice = choice[rng.integers(0, choice.size, choice.size)]
        return comp[choice], v[choice]

    c_ref = float(np.exp(np.mean(np.log(c))))
    start = np.array([np.log(fit.A) - fit.exponent * np.log(c_ref), fit.exponent, fit.floor])
    seed = int(fit_kwargs.get("seed", 0))
    fit.sampling_noise = sampling_noise_block(draw, fit, c_ref, start, n_rep=n_noise, seed=seed + 1)
    fit.sampling_noise.update(
        frontier_change_rate=float(np.mean(changes)) if changes else 0.0,
        n_points_with_se=int((ses > 0).sum()),
        max_rel_se=float(np.max(ses / vals)) if vals.size else 0.0,
    )
    return fit, front
