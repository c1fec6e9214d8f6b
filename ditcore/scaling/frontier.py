"""Compute-efficient frontier and isoFLOP analysis of a scaling grid (Hoffmann et al. 2022, §3.1-3.2).

Points are dicts of the experiment record (`points.json`): "flops" (training FLOPs consumed at
the eval point), "budget_flops" (the trial's compute budget), "params" (model size N), "model",
and metrics such as "fid" / "val_loss".
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ditcore.scaling.powerlaw import MIN_BOOT_OK, FitError


def _num(p: dict, key: str) -> float | None:
    """p[key] as a finite float, else None."""
    v = p.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def compute_of(p: dict) -> float | None:
    """Training FLOPs of a point: consumed "flops", else its "budget_flops"."""
    return _num(p, "flops") if _num(p, "flops") is not None else _num(p, "budget_flops")


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
        if cur is None or (m, c, _num(p, "params") or 0) < (_num(cur, metric), compute_of(cur), _num(cur, "params") or 0):
            best[b] = p
    return [best[b] for b in sorted(best)]


def fit_parabola(log_n: Any, values: Any) -> dict[str, Any]:
    """Quadratic fit values ~ a (log N)^2 + b log N + c and its minimum N* (Chinchilla approach 2).

    When the parabola is not convex or its vertex lies outside the sampled range, N* is the best
    sampled size and "interior" is False (the grid does not bracket the optimum).
    """
    x = np.asarray(log_n, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if np.unique(x).size < 3:
        raise FitError(f"isoFLOP parabola needs >= 3 distinct model sizes, got {np.unique(x).size}")
    a, b, c = np.polyfit(x, y, 2)
    interior = bool(a > 0 and x.min() <= -b / (2 * a) <= x.max())
    if interior:
        x_opt = -b / (2 * a)
        y_opt = c - b * b / (4 * a)
    else:
        i = int(np.argmin(y))
        x_opt, y_opt = x[i], y[i]
    return {"coef": [float(a), float(b), float(c)], "log_n_opt": float(x_opt), "n_opt": float(np.exp(x_opt)),
            "metric_opt": float(y_opt), "interior": interior}


def _loglog_line(c: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """(k, a) of N = k * C^a by least squares in log-log space."""
    a, log_k = np.polyfit(np.log(c), np.log(n), 1)
    return float(np.exp(log_k)), float(a)


def isoflop_analysis(points: list[dict], metric: str = "fid", *, n_boot: int = 200, ci_level: float = 0.95,
                     seed: int = 0, return_samples: bool = False) -> dict[str, Any]:
    """Per-budget parabola of `metric` vs log N, its minimum N*, and N*(C) = k * C^a with bootstrap CIs.

    Bootstrap: within each budget, resample that budget's points with replacement, refit the
    parabolas and the line (resamples with < 3 distinct sizes in some budget are skipped; with only
    3 sizes per budget few survive, and below MIN_BOOT_OK refits no interval is given).
    Raises FitError when fewer than 2 budgets have >= 3 model sizes. `return_samples` adds the
    bootstrap (k, a) rows as n_opt_law["samples"] (for plotting a band; not needed in reports).
    """
    groups: dict[float, list[tuple[float, float]]] = {}
    for p in points:
        m, b, n = _num(p, metric), budget_of(p), _num(p, "params")
        if m is None or b is None or n is None or n <= 0:
            continue
        groups.setdefault(b, []).append((n, m))
    budgets = []
    for b in sorted(groups):
        ns = np.array([n for n, _ in groups[b]])
        if np.unique(ns).size < 3:
            continue
        ms = np.array([m for _, m in groups[b]])
        par = fit_parabola(np.log(ns), ms)
        budgets.append({"budget_flops": b, "params": ns.tolist(), metric: ms.tolist(), **par})
    if len(budgets) < 2:
        raise FitError(f"isoFLOP analysis needs >= 2 budgets with >= 3 model sizes each, got {len(budgets)} "
                       f"(budgets: {sorted(groups)})")
    c = np.array([r["budget_flops"] for r in budgets])
    n_opt = np.array([r["n_opt"] for r in budgets])
    k, a = _loglog_line(c, n_opt)

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        nb = []
        for r in budgets:
            ns, ms = np.log(np.array(r["params"])), np.array(r[metric])
            idx = rng.integers(0, ns.size, ns.size)
            if np.unique(ns[idx]).size < 3:
                break
            nb.append(fit_parabola(ns[idx], ms[idx])["n_opt"])
        else:
            samples.append(_loglog_line(c, np.array(nb)))
    ci: dict[str, list[float]] = {}
    if len(samples) >= MIN_BOOT_OK:
        arr = np.array(samples)
        q = [100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2]
        ci = {"k": [float(v) for v in np.percentile(arr[:, 0], q)], "a": [float(v) for v in np.percentile(arr[:, 1], q)]}
    law = {"form": "N*(C) = k * C^a", "params": {"k": k, "a": a}, "ci": ci, "ci_level": ci_level,
           "n_boot": n_boot, "n_boot_ok": len(samples), "n_budgets": len(budgets),
           "all_interior": all(r["interior"] for r in budgets)}
    if return_samples:
        law["samples"] = [list(s) for s in samples]
    return {"metric": metric, "budgets": budgets, "n_opt_law": law}
