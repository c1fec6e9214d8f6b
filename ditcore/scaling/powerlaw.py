"""Saturating power laws y(C) = A * C^-beta + y_inf fitted in log space, with bootstrap intervals.

Used for FID(C) = A * C^-beta + FID_inf (DESIGN §1) and the validation-loss law
L(C) = A * C^-alpha + L_inf (Kaplan et al. 2020; Hoffmann et al. 2022 Eq. 2 restricted to compute).
Compute C is training FLOPs (multiply-add = 2 FLOPs, training step = 3 x forward).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

# Grid of floor fractions (y_inf / min y) tried for the robust initialisation.
_FLOOR_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
_MAX_EXPONENT = 5.0
# Fewer successful bootstrap refits than this give no interval (percentiles of a handful are noise).
MIN_BOOT_OK = 10


class FitError(ValueError):
    """A fit cannot be made from the given points (too few, non-positive values, ...)."""


@dataclass
class PowerLawFit:
    """Fitted y(C) = A * C^-exponent + floor, with bootstrap intervals and fit diagnostics."""

    A: float
    exponent: float
    floor: float
    names: tuple[str, str, str] = ("A", "beta", "FID_inf")
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    ci_level: float = 0.95
    n_points: int = 0
    n_boot: int = 0
    n_boot_ok: int = 0
    rmse_log: float = 0.0
    compute_range: tuple[float, float] = (0.0, 0.0)
    held_out: dict[str, Any] | None = None
    samples: np.ndarray | None = field(default=None, repr=False)  # bootstrap (A, exponent, floor) rows

    @property
    def params(self) -> dict[str, float]:
        """Parameters under their law-specific names, e.g. {"A", "beta", "FID_inf"}."""
        return dict(zip(self.names, (self.A, self.exponent, self.floor)))

    def predict(self, compute: Any) -> np.ndarray:
        """y at compute C (array-like, FLOPs)."""
        c = np.asarray(compute, dtype=np.float64)
        return self.A * np.power(c, -self.exponent) + self.floor

    def band(self, compute: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval (lo, hi) of the prediction at compute C; the fit itself if no samples."""
        c = np.asarray(compute, dtype=np.float64)
        if self.samples is None or len(self.samples) < MIN_BOOT_OK:
            y = self.predict(c)
            return y, y
        level = self.ci_level if level is None else level
        preds = self.samples[:, :1] * np.power(c[None, :], -self.samples[:, 1:2]) + self.samples[:, 2:3]  # [B, n]
        lo, hi = np.percentile(preds, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
        return lo, hi

    def formula(self) -> str:
        """Human-readable law, e.g. 'FID(C) = 3.1e+04 * C^-0.321 + 5.2'."""
        a, e, f = self.names
        return f"{a} * C^-{e} + {f}  with  {a}={self.A:.4g}, {e}={self.exponent:.4g}, {f}={self.floor:.4g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        a, e, f = self.names
        return {
            "form": f"{a} * C^-{e} + {f}",
            "params": self.params,
            "ci": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()},
            "ci_level": self.ci_level,
            "n_points": self.n_points,
            "dof": self.n_points - 3,
            "n_boot": self.n_boot,
            "n_boot_ok": self.n_boot_ok,
            "rmse_log": self.rmse_log,
            "compute_range": [float(x) for x in self.compute_range],
            "held_out": self.held_out,
        }


def _validate(compute: Any, values: Any, min_points: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 arrays of positive, finite compute and values with at least `min_points` distinct computes."""
    c = np.asarray(compute, dtype=np.float64).ravel()
    y = np.asarray(values, dtype=np.float64).ravel()
    if c.shape != y.shape:
        raise FitError(f"{what}: {c.size} compute values but {y.size} metric values")
    ok = np.isfinite(c) & np.isfinite(y)
    c, y = c[ok], y[ok]
    if (c <= 0).any() or (y <= 0).any():
        raise FitError(f"{what}: compute and metric values must be > 0 for a log-space fit")
    n_distinct = np.unique(c).size
    if n_distinct < min_points:
        raise FitError(f"{what}: need at least {min_points} points at distinct compute, got {n_distinct}")
    return c, y


def _residuals(theta: np.ndarray, x: np.ndarray, logy: np.ndarray) -> np.ndarray:
    """log y - log(a * x^-b + f) for theta = (log a, b, f); x is compute / reference compute."""
    log_a, b, f = theta
    return logy - np.log(np.exp(log_a - b * np.log(x)) + f)


def _jacobian(theta: np.ndarray, x: np.ndarray, logy: np.ndarray) -> np.ndarray:
    """d residual / d (log a, b, f), analytic (saves the finite-difference evaluations)."""
    log_a, b, f = theta
    lx = np.log(x)
    p = np.exp(log_a - b * lx)
    g = p + f
    return np.stack([-p / g, p * lx / g, -1.0 / g], axis=1)


def _init(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Robust start: for floors on a grid below min y, a log-log line through y - floor; keep the best."""
    best, best_cost = None, np.inf
    lx, ymin = np.log(x), y.min()
    for frac in _FLOOR_GRID:
        f = frac * ymin
        slope, icpt = np.polyfit(lx, np.log(y - f), 1)
        b = float(np.clip(-slope, 1e-3, _MAX_EXPONENT - 1e-3))
        theta = np.array([icpt, b, f])
        cost = float(np.sum(_residuals(theta, x, np.log(y)) ** 2))
        if cost < best_cost:
            best, best_cost = theta, cost
    return best


def _fit_theta(x: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Least-squares (log a, b, floor) in log space; floor in [0, min y), exponent in [0, 5]."""
    ymin = float(y.min())
    theta0 = _init(x, y) if start is None else start.copy()
    lo = np.array([-np.inf, 0.0, 0.0])
    hi = np.array([np.inf, _MAX_EXPONENT, ymin * (1 - 1e-9)])
    theta0 = np.clip(theta0, lo + [0, 1e-9, 0], hi - [0, 1e-9, 1e-9 * ymin])
    res = least_squares(_residuals, theta0, jac=_jacobian, args=(x, np.log(y)), bounds=(lo, hi), method="trf",
                        x_scale="jac", max_nfev=500)
    return res.x


def fit_power_law(compute: Any, values: Any, *, names: tuple[str, str, str] = ("A", "beta", "FID_inf"),
                  n_boot: int = 200, ci_level: float = 0.95, seed: int = 0, held_out: bool = True) -> PowerLawFit:
    """Fit y = A * C^-exponent + floor (log-space least squares, robust init) with bootstrap CIs.

    Bootstrap: resample the points with replacement (numpy Generator seeded by `seed`), refit, and
    take percentile intervals; resamples with fewer than 3 distinct computes are skipped, and no
    interval is given when fewer than MIN_BOOT_OK refits succeeded. With
    `held_out`, also fit without the largest compute and report the prediction error there.
    """
    c, y = _validate(compute, values, 3, f"fit of {names[0]} * C^-{names[1]} + {names[2]}")
    c_ref = float(np.exp(np.mean(np.log(c))))  # normalise C (~1e15) so log a is O(1)
    x = c / c_ref
    theta = _fit_theta(x, y)
    rmse = float(np.sqrt(np.mean(_residuals(theta, x, np.log(y)) ** 2)))

    def to_params(t: np.ndarray) -> tuple[float, float, float]:
        # a * (C/c_ref)^-b = (a * c_ref^b) * C^-b
        return float(np.exp(t[0] + t[1] * np.log(c_ref))), float(t[1]), float(t[2])

    A, b, f = to_params(theta)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        idx = rng.integers(0, c.size, c.size)
        if np.unique(c[idx]).size < 3:
            continue
        try:
            samples.append(to_params(_fit_theta(x[idx], y[idx], start=theta)))
        except (ValueError, np.linalg.LinAlgError):
            continue
    ci: dict[str, tuple[float, float]] = {}
    if len(samples) >= MIN_BOOT_OK:
        arr = np.array(samples)
        q = [100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2]
        for i, name in enumerate(names):
            lo, hi = np.percentile(arr[:, i], q)
            ci[name] = (float(lo), float(hi))
    fit = PowerLawFit(A=A, exponent=b, floor=f, names=names, ci=ci, ci_level=ci_level, n_points=int(c.size),
                      n_boot=n_boot, n_boot_ok=len(samples), rmse_log=rmse,
                      compute_range=(float(c.min()), float(c.max())),
                      samples=np.array(samples) if samples else None)
    if held_out:
        fit.held_out = held_out_check(c, y, names=names)
    return fit


def held_out_check(compute: Any, values: Any, *, names: tuple[str, str, str] = ("A", "beta", "FID_inf")) -> dict[str, Any]:
    """Fit without the largest compute, predict it; {"compute","observed","predicted","abs_error","rel_error",...}.

    The observed value at the largest compute is the minimum there (the frontier convention).
    Returns {"skipped": reason} when fewer than 3 distinct computes remain.
    """
    c = np.asarray(compute, dtype=np.float64).ravel()
    y = np.asarray(values, dtype=np.float64).ravel()
    c_max = float(c.max())
    keep = c < c_max
    if np.unique(c[keep]).size < 3:
        return {"skipped": f"need >= 4 distinct computes for a held-out check, got {np.unique(c).size}"}
    fit = fit_power_law(c[keep], y[keep], names=names, n_boot=0, held_out=False)
    observed = float(y[~keep].min())
    predicted = float(fit.predict(c_max))
    return {
        "compute": c_max,
        "observed": observed,
        "predicted": predicted,
        "abs_error": abs(predicted - observed),
        "rel_error": abs(predicted - observed) / abs(observed),
        "n_fit": int(keep.sum()),
        "params": fit.params,
    }


def fit_fid_law(compute: Any, fid: Any, **kwargs: Any) -> PowerLawFit:
    """FID(C) = A * C^-beta + FID_inf."""
    return fit_power_law(compute, fid, names=("A", "beta", "FID_inf"), **kwargs)


def fit_loss_law(compute: Any, loss: Any, **kwargs: Any) -> PowerLawFit:
    """L(C) = A * C^-alpha + L_inf."""
    return fit_power_law(compute, loss, names=("A", "alpha", "L_inf"), **kwargs)
