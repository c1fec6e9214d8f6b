"""Parametric loss surface L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, approach 3).

N is parameters, D training images seen (`frontier.images_of`). As in Hoffmann et al. 2022 §3.3 the fit
minimises the Huber loss (delta = 1e-3) of log-space residuals LSE(a - alpha log N, b - beta log D, e) - log L
from the best few of a grid of starts (they used L-BFGS; here scipy's trust-region least squares with its Huber
loss, the same objective); N and D are divided by their geometric means first so that
the grid is scale free. Every evaluated point counts (not only isoFLOP minima). Intervals: percentile bootstrap
over points (refits warm-started at the full fit); not calibrated by a coverage experiment here, and points
from one training run are not independent, so read them as lower bounds on the uncertainty.

Minimising L at fixed compute C proportional to N D (train FLOPs per image proportional to N) gives
N*(C) ~ C^(beta / (alpha + beta)) and D*(C) ~ C^(alpha / (alpha + beta)) (Hoffmann et al. 2022 Eq. 4), reported
as n_opt_exponent and d_opt_exponent next to the isoFLOP estimates of approach 2.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.special import logsumexp

from ditcore.scaling.frontier import _num, images_of
from ditcore.scaling.powerlaw import MIN_BOOT_OK, FitError

NAMES = ("E", "A", "B", "alpha", "beta")
_MAX_EXP = 5.0
_N_STARTS = 4


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative at residuals r."""
    a = np.abs(r)
    quad = a <= delta
    loss = np.where(quad, 0.5 * r * r, delta * (a - 0.5 * delta))
    grad = np.where(quad, r, delta * np.sign(r))
    return loss, grad


def _residuals(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """log L-hat - log L for theta = (a, b, e, alpha, beta) on normalised log N, log D."""
    a, b, e, al, be = theta
    return logsumexp(np.stack([a - al * ln, b - be * ld, np.full_like(ln, e)]), axis=0) - ly


def _jacobian(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """d residual / d theta: softmax weights of the three terms (times -log N, -log D for the exponents)."""
    a, b, e, al, be = theta
    terms = np.stack([a - al * ln, b - be * ld, np.full_like(ln, e)])  # [3, n]
    w = np.exp(terms - logsumexp(terms, axis=0))
    return np.stack([w[0], w[1], w[2], -w[0] * ln, -w[1] * ld], axis=1)


def _grid_starts(ln: np.ndarray, ld: np.ndarray, ly: np.ndarray, delta: float, k: int) -> list[np.ndarray]:
    """The k best of a grid of starts (exponents, and term sizes relative to the lowest loss)."""
    lmin = float(ly.min())
    exps = (0.25, 0.5, 1.0, 2.0)
    e_grid = [lmin + np.log(f) for f in (0.1, 0.5, 0.9)]
    ab_grid = [lmin + np.log(f) for f in (0.05, 0.2, 0.5, 1.0)]
    cand = np.array([(a, b, e, al, be) for al, be, e, a, b in product(exps, exps, e_grid, ab_grid, ab_grid)])
    terms = np.stack(
        [cand[:, :1] - cand[:, 3:4] * ln, cand[:, 1:2] - cand[:, 4:5] * ld, np.repeat(cand[:, 2:3], ln.size, axis=1)]
    )  # [3, G, n]
    loss = _huber(logsumexp(terms, axis=0) - ly, delta)[0].sum(axis=1)
    return [cand[i] for i in np.argsort(loss)[:k]]


def _minimise(ln: np.ndarray, ld: np.ndarray, ly: np.ndarray, delta: float, starts: list[np.ndarray]) -> np.ndarray:
    """Best Huber-loss optimum over the starts; exponents kept in [0, 5].

    scipy's least_squares with loss="huber" and f_scale=delta minimises sum delta^2 rho((r / delta)^2) with
    rho(z) = z (z <= 1), 2 sqrt(z) - 1 (z > 1): twice the Huber loss of Hoffmann et al. 2022 §3.3, same optimum.
    """
    lo = np.array([-np.inf, -np.inf, -np.inf, 0.0, 0.0])
    hi = np.array([np.inf, np.inf, np.inf, _MAX_EXP, _MAX_EXP])
    best, best_f = starts[0], np.inf
    for s in starts:
        s = np.clip(s, lo + [0, 0, 0, 1e-9, 1e-9], hi - [0, 0, 0, 1e-9, 1e-9])
        res = least_squares(
            _residuals,
            s,
            jac=_jacobian,
            args=(ln, ld, ly),
            bounds=(lo, hi),
            method="trf",
            loss="huber",
            f_scale=delta,
            x_scale="jac",
            max_nfev=2000,
            xtol=1e-12,
            ftol=1e-12,
        )
        if res.cost < best_f:
            best, best_f = res.x, float(res.cost)
    return best


def _to_params(theta: np.ndarray, ln0: float, ld0: float) -> np.ndarray:
    """(E, A, B, alpha, beta) in original units from normalised theta."""
    a, b, e, al, be = theta
    return np.array([np.exp(e), np.exp(a + al * ln0), np.exp(b + be * ld0), al, be])


def fit_loss_surface(
    points: list[dict],
    metric: str = "val_loss",  # the points' key to fit: any positive metric, FID included
    *,
    n_boot: int = 100,
    ci_level: float = 0.95,
    seed: int = 0,
    huber_delta: float = 1e-3,  # of the log-space residuals (Hoffmann et al. 2022, Sec. 3.3)
    min_points: int = 8,
) -> dict[str, Any]:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta to points with params, images and `metric` (see module doc).

    Returns {"form", "metric", "params": {E, A, B, alpha, beta}, "ci": {name: [lo, hi]}, "ci_level",
    "n_opt_exponent", "n_opt_exponent_ci", "d_opt_exponent", "d_opt_exponent_ci", "n_points", "n_boot",
    "n_boot_ok", "rmse_log", "huber_delta", "params_range", "images_range"}. FitError with fewer than
    `min_points` usable points or fewer than 3 distinct sizes or image counts.
    """
    rows = [(_num(p, "params"), images_of(p), _num(p, metric)) for p in points]
    rows = [r for r in rows if all(v is not None and v > 0 for v in r)]
    if len(rows) < min_points:
        raise FitError(
            f"L(N, D) fit needs >= {min_points} points with params, images seen and {metric!r}, got {len(rows)}"
        )
    n, d, y = (np.array(col, dtype=np.float64) for col in zip(*rows))
    if np.unique(n).size < 3 or np.unique(d).size < 3:
        raise FitError(
            f"L(N, D) fit needs >= 3 distinct model sizes and image counts, got {np.unique(n).size} "
            f"and {np.unique(d).size}"
        )
    ln0, ld0 = float(np.mean(np.log(n))), float(np.mean(np.log(d)))
    ln, ld, ly = np.log(n) - ln0, np.log(d) - ld0, np.log(y)
    theta = _minimise(ln, ld, ly, huber_delta, _grid_starts(ln, ld, ly, huber_delta, _N_STARTS))
    params = _to_params(theta, ln0, ld0)
    resid = _residuals(theta, ln, ld, ly)

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        idx = rng.integers(0, n.size, n.size)
        if np.unique(n[idx]).size < 3 or np.unique(d[idx]).size < 3:
            continue
        samples.append(_to_params(_minimise(ln[idx], ld[idx], ly[idx], huber_delta, [theta]), ln0, ld0))

    def exps(p: np.ndarray) -> tuple[float, float]:
        s = p[3] + p[4]
        return (float(p[4] / s), float(p[3] / s)) if s > 0 else (float("nan"), float("nan"))

    a_opt, b_opt = exps(params)
    ci: dict[str, list[float]] = {}
    a_ci = b_ci = None
    if len(samples) >= MIN_BOOT_OK:
        arr = np.array(samples)
        q = [100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2]
        ci = {name: [float(v) for v in np.percentile(arr[:, i], q)] for i, name in enumerate(NAMES)}
        ab = np.array([exps(p) for p in arr])
        ab = ab[np.isfinite(ab).all(axis=1)]
        if len(ab) >= MIN_BOOT_OK:
            a_ci = [float(v) for v in np.percentile(ab[:, 0], q)]
            b_ci = [float(v) for v in np.percentile(ab[:, 1], q)]
    return {
        "form": "L(N, D) = E + A / N^alpha + B / D^beta",
        "metric": metric,
        "params": {name: float(v) for name, v in zip(NAMES, params)},
        "ci": ci,
        "ci_level": ci_level,
        "n_opt_exponent": a_opt,
        "n_opt_exponent_ci": a_ci,
        "d_opt_exponent": b_opt,
        "d_opt_exponent_ci": b_ci,
        "n_points": int(n.size),
        "n_boot": n_boot,
        "n_boot_ok": len(samples),
        "rmse_log": float(np.sqrt(np.mean(resid**2))),
        "huber_delta": huber_delta,
        "params_range": [float(n.min()), float(n.max())],
        "images_range": [float(d.min()), float(d.max())],
    }
