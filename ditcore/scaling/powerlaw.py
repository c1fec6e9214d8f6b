"""Saturating power laws y(C) = A * C^-beta + y_inf fitted in log space, with profile-likelihood intervals.

Used for the frontier law FID(C) = A * C^-beta + FID_inf (FID falls with training compute for diffusion
transformers, Peebles & Xie 2023) and the validation-loss law L(C) = A * C^-alpha + L_inf (Kaplan et al. 2020;
Hoffmann et al. 2022 Eq. 2 restricted to compute). Compute C is training FLOPs (multiply-add = 2 FLOPs,
training step = 3 x forward).

Fit: least squares on log y (multiplicative noise), floor in [0, min y), exponent in [0, 5], started from the
best of a grid of floors.

Intervals (`ci`, method "profile"): F-calibrated profile likelihood. A value v of one parameter is inside the
interval when the best fit with that parameter held at v (the other two re-optimised) has
RSS <= RSS_min * (1 + F_{1, n-3}(level) / (n - 3)), the small-sample calibration that is exact for linear least
squares. The interval is the outermost crossing found on a scan from the estimate to the search bound, refined by
root finding; an end that reaches the search bound (exponent 0 or 5, floor 0 or min y, |log A| very large) is
marked in `ci_open`: there the data do not bound the parameter, only the search range does. So is an end of A's
or the floor's interval where the re-optimised exponent sits on its bound (0 or 5): that end is set by the
exponent's search range, not by the data.
Why profile: `ditcore.scaling.calibration` measures the coverage of the 95% interval of the exponent on synthetic
frontiers with known parameters and a few percent of multiplicative noise (6-10 points over 1.5-2 decades).
Residual and parametric bootstraps under-cover (0.90-0.93), the percentile bootstrap over points covers
(0.96-0.98) but is 11-65% wider (median widths) and erratic (it refits resamples with 3-4 distinct points), the
profile interval covers 0.96-0.97 and is narrower; see that module for the table. The percentile bootstrap over
points is still computed (`ci_bootstrap`); its rows (`samples`) give the prediction band and arm-crossing intervals.

The floor's bound (`floor_bound`): the floor is kept below the lowest value, so on a frontier whose lowest point
is low (noise, or the frontier's lowest-value selection) the estimate can sit on that bound, and the exponent's
interval and the held-out error then hold only given it. Every fit records whether it does and, if so, the same law
with the floor free (up to the highest value): its parameters, profile intervals, held-out error and an F test of
the bound.

Sampling noise (`value_se`): each value's own standard error (e.g. the bootstrap SE of one FID over its generated
samples, `ditcore.metrics.fid.fid_bootstrap`) is propagated by refitting on values redrawn within that noise
(log-normal, log-sd = se / y). `sampling_noise` reports how far the parameters move (sd, interval, sd relative to
the width of `ci`) and an interval from a joint bootstrap over points and each point's noise. The residual
scatter already contains the sampling noise, so the joint interval double-counts it: it is an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from scipy.optimize import brentq, least_squares

# Grid of floor fractions (y_inf / min y) tried for the robust initialisation.
_FLOOR_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
_MAX_EXPONENT = 5.0
# Fewer successful bootstrap refits than this give no interval (percentiles of a handful are noise).
MIN_BOOT_OK = 10
# Grid points per side of the profile scan (squared spacing: dense near the estimate, where profiles curve most).
_PROFILE_GRID = 12
INTERVAL_METHODS = ("profile", "bootstrap")


class FitError(ValueError):
    """A fit cannot be made from the given points (too few, non-positive values, ...)."""


@dataclass
class PowerLawFit:
    """Fitted y(C) = A * C^-exponent + floor, with intervals and fit diagnostics."""

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
    ci_method: str = "bootstrap"
    ci_bootstrap: dict[str, tuple[float, float]] = field(default_factory=dict)
    ci_open: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    sampling_noise: dict[str, Any] | None = None
    min_value: float = 0.0
    floor_bound: dict[str, Any] | None = None  # the floor at its bound (min y) and the fit without it: `floor_bound`

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
        c = np.atleast_1d(np.asarray(compute, dtype=np.float64))  # one compute value too: [1]
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
        out = {
            "form": f"{a} * C^-{e} + {f}",
            "params": self.params,
            "ci": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()},
            "ci_level": self.ci_level,
            "ci_method": self.ci_method,
            "ci_open": {k: [bool(lo), bool(hi)] for k, (lo, hi) in self.ci_open.items()},
            "ci_bootstrap": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci_bootstrap.items()},
            "n_points": self.n_points,
            "dof": self.n_points - 3,
            "n_boot": self.n_boot,
            "n_boot_ok": self.n_boot_ok,
            "rmse_log": self.rmse_log,
            "compute_range": [float(x) for x in self.compute_range],
            "min_value": self.min_value,
            "held_out": self.held_out,
        }
        if self.sampling_noise is not None:
            out["sampling_noise"] = self.sampling_noise
        if self.floor_bound is not None:
            out["floor_bound"] = self.floor_bound
        return out


def _validate(compute: Any, values: Any, min_points: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 arrays of positive, finite compute and values with at least `min_points` distinct computes; any
    other input is a FitError naming a bad point."""
    c = np.asarray(compute, dtype=np.float64).ravel()
    y = np.asarray(values, dtype=np.float64).ravel()
    if c.shape != y.shape:
        raise FitError(f"{what}: {c.size} compute values but {y.size} metric values")
    nonfinite = np.flatnonzero(~(np.isfinite(c) & np.isfinite(y)))
    if nonfinite.size:
        # Never dropped silently: a fit on the points that are left would answer another question (the sweep
        # leaves such points out itself, and its report names them).
        i = int(nonfinite[0])
        raise FitError(
            f"{what}: {nonfinite.size} point(s) are not finite (e.g. point {i}: compute {c[i]:.4g}, value {y[i]:.4g}); "
            "leave them out before fitting"
        )
    bad = np.flatnonzero((c <= 0) | (y <= 0))
    if bad.size:
        i = int(bad[0])
        raise FitError(
            f"{what}: compute and metric values must be > 0 for a log-space fit; {bad.size} are not "
            f"(e.g. compute {c[i]:.4g}, value {y[i]:.4g})"
        )
    n_distinct = np.unique(c).size
    if n_distinct < min_points:
        raise FitError(f"{what}: need at least {min_points} points at distinct compute, got {n_distinct}")
    return c, y


def _residuals(theta: np.ndarray, x: np.ndarray, logy: np.ndarray) -> np.ndarray:
    """log y - log(a * x^-b + f) for theta = (log a, b, f); x is compute / reference compute."""
    log_a, b, f = theta
    with np.errstate(over="ignore"):  # a trial step far off the optimum: inf gives an inf residual, rejected
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


def _fit_theta(
    x: np.ndarray, y: np.ndarray, start: np.ndarray | None = None, floor_max: float | None = None
) -> np.ndarray:
    """Least-squares (log a, b, floor) in log space; floor in [0, min y) (or [0, floor_max)), exponent in [0, 5]."""
    ymin = float(y.min())
    fmax = ymin if floor_max is None else float(floor_max)
    theta0 = _init(x, y) if start is None else start.copy()
    lo = np.array([-np.inf, 0.0, 0.0])
    hi = np.array([np.inf, _MAX_EXPONENT, fmax * (1 - 1e-9)])
    theta0 = np.clip(theta0, lo + [0, 1e-9, 0], hi - [0, 1e-9, 1e-9 * fmax])
    res = least_squares(
        _residuals,
        theta0,
        jac=_jacobian,
        args=(x, np.log(y)),
        bounds=(lo, hi),
        method="trf",
        x_scale="jac",
        max_nfev=500,
    )
    return res.x


def profile_threshold(
    rss_min: float, n_points: int, level: float = 0.95, n_params: int = 3, calibration: str = "F"
) -> float:
    """RSS below which a fixed parameter value is inside the profile interval (1 constrained dof).

    "F": RSS_min (1 + F_{1, n-p}(level) / (n - p)), exact for linear least squares with unknown noise; "chi2":
    the large-sample likelihood ratio n log(RSS / RSS_min) <= chi2_1(level), which ignores that the noise
    level is estimated from n - p residuals and is too narrow for a handful of points.
    """
    dof = n_points - n_params
    if dof <= 0:
        raise FitError(f"profile interval needs more points than parameters ({n_points} <= {n_params})")
    if calibration == "chi2":
        return float(rss_min * np.exp(stats.chi2.ppf(level, 1) / n_points))
    if calibration != "F":
        raise ValueError(f"calibration must be 'F' or 'chi2', got {calibration!r}")
    return float(rss_min * (1.0 + stats.f.ppf(level, 1, dof) / dof))


class _Profile:
    """Profile RSS of one parameter of the log-space fit (the other two re-optimised), for interval search.

    Parameter index j: 0 = log A in original compute units (log a + b log c_ref), 1 = exponent b, 2 = floor f.
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, theta: np.ndarray, log_c_ref: float, floor_max: float | None = None
    ) -> None:
        self.x, self.lx, self.ly = x, np.log(x), np.log(y)
        self.ymin = float(y.min())
        self.fhi = (self.ymin if floor_max is None else float(floor_max)) * (1 - 1e-9)
        self.lcref = log_c_ref
        self.theta = np.asarray(theta, dtype=np.float64)
        self.rss_min = float(np.sum(_residuals(self.theta, x, self.ly) ** 2))

    def value(self, j: int, theta: np.ndarray) -> float:
        """Parameter j of a full theta."""
        return float(theta[0] + theta[1] * self.lcref) if j == 0 else float(theta[j])

    def search_bounds(self, j: int) -> tuple[float, float]:
        """Range scanned for parameter j; reaching an end means the data do not bound it there."""
        if j == 1:
            return 0.0, _MAX_EXPONENT
        if j == 2:
            return 0.0, self.fhi
        v = self.value(0, self.theta)
        span = _MAX_EXPONENT * max(abs(self.lcref), 1.0)  # log A moves with b * log C: generous but finite
        return v - span, v + span

    def _full(self, j: int, v: float, p: np.ndarray) -> np.ndarray:
        if j == 0:
            return np.array([v - p[0] * self.lcref, p[0], p[1]])  # free (b, f)
        if j == 1:
            return np.array([p[0], v, p[1]])  # free (log a, f)
        return np.array([p[0], p[1], v])  # free (log a, b)

    def _free(self, j: int, theta: np.ndarray) -> np.ndarray:
        return theta[[1, 2]] if j == 0 else theta[[0, 2]] if j == 1 else theta[[0, 1]]

    def _box(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        if j == 0:
            return np.array([0.0, 0.0]), np.array([_MAX_EXPONENT, self.fhi])
        if j == 1:
            return np.array([-np.inf, 0.0]), np.array([np.inf, self.fhi])
        return np.array([-np.inf, 0.0]), np.array([np.inf, _MAX_EXPONENT])

    def _data_starts(self, j: int, v: float) -> list[np.ndarray]:
        """Starts from the data for a fixed parameter: log-log lines through y - floor for a few floors."""
        out = []
        y = np.exp(self.ly)
        if j == 2:
            if v >= self.ymin:  # a floor above a measured value (free-floor profile): start from the fits only
                return []
            slope, icpt = np.polyfit(self.lx, np.log(y - v), 1)
            return [np.array([icpt, float(np.clip(-slope, 0.0, _MAX_EXPONENT)), v])]
        for frac in (0.0, 0.5, 0.9):
            f = frac * self.ymin
            if j == 1:
                out.append(np.array([float(np.mean(np.log(y - f) + v * self.lx)), v, f]))
            else:
                slope, _ = np.polyfit(self.lx, np.log(y - f), 1)
                b = float(np.clip(-slope, 0.0, _MAX_EXPONENT))
                out.append(np.array([v - b * self.lcref, b, f]))
        return out

    def rss(self, j: int, v: float, extra: tuple[np.ndarray, ...] = ()) -> tuple[float, np.ndarray]:
        """(min RSS with parameter j held at v, the full theta there); the two best of several starts refined."""
        lo, hi = self._box(j)
        eps = np.where(np.isfinite(hi - lo), 1e-9 * np.maximum(hi - lo, 1e-300), 0.0)

        def res(p: np.ndarray) -> np.ndarray:
            return _residuals(self._full(j, v, p), self.x, self.ly)

        def jac(p: np.ndarray) -> np.ndarray:
            J = _jacobian(self._full(j, v, p), self.x, self.ly)
            if j == 0:
                return np.stack([J[:, 1] - self.lcref * J[:, 0], J[:, 2]], axis=1)
            return J[:, [k for k in range(3) if k != j]]

        starts = [np.clip(self._free(j, t), lo + eps, hi - eps) for t in (self.theta, *extra, *self._data_starts(j, v))]
        costs = [float(np.sum(res(s) ** 2)) for s in starts]
        best, best_p = np.inf, starts[0]
        for i in np.argsort(costs)[:2]:
            r = least_squares(res, starts[i], jac=jac, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=200)
            cost = float(np.sum(r.fun**2))
            if cost < best:
                best, best_p = cost, r.x
        return best, self._full(j, v, best_p)

    def interval(self, j: int, thr: float) -> tuple[tuple[float, float], tuple[bool, bool]]:
        """((lo, hi), (lo_open, hi_open)) of parameter j where the profile RSS is <= thr."""
        v_hat = self.value(j, self.theta)
        ends, open_ = [], []
        for bound in self.search_bounds(j):
            end, is_open = self._side(j, v_hat, bound, thr)
            ends.append(end)
            open_.append(is_open)
        return (min(ends), max(ends)), (open_[0], open_[1])

    def _side(self, j: int, v_hat: float, bound: float, thr: float) -> tuple[float, bool]:
        if abs(bound - v_hat) <= 1e-12 * max(1.0, abs(v_hat)):
            return float(bound), True
        grid = v_hat + (bound - v_hat) * np.linspace(0.0, 1.0, _PROFILE_GRID + 1)[1:] ** 2
        prev, gvals, thetas = self.theta, [], []
        for v in grid:
            r, th = self.rss(j, float(v), (prev,))
            gvals.append(r - thr)
            thetas.append(th)
            prev = th
        feasible = [k for k, g in enumerate(gvals) if g <= 0]
        k = max(feasible) if feasible else -1  # outermost point inside: conservative if the profile is not monotone
        if k == len(grid) - 1:
            return float(bound), True
        inner = v_hat if k < 0 else float(grid[k])
        outer = float(grid[k + 1])
        hints = (thetas[k + 1],) if k < 0 else (thetas[k], thetas[k + 1])

        def g(v: float) -> float:
            return self.rss(j, v, hints)[0] - thr

        if g(inner) > 0:  # the warm starts found a worse optimum at the inner end; keep the scan's value
            return inner, self._exponent_pinned(j, inner, hints)
        xtol = 1e-6 * max(1.0, abs(v_hat)) if j != 2 else 1e-6 * self.ymin
        end = float(brentq(g, inner, outer, xtol=xtol))
        return end, self._exponent_pinned(j, end, hints)

    def _exponent_pinned(self, j: int, v: float, hints: tuple[np.ndarray, ...]) -> bool:
        """With parameter j (not the exponent) held at v, does the re-optimised exponent sit on its search bound?

        Then the RSS there, and so this end of j's interval, is set by the exponent's range, not by the data."""
        if j == 1:
            return False
        b = float(self.rss(j, v, hints)[1][1])
        tol = 1e-6 * _MAX_EXPONENT
        return b <= tol or b >= _MAX_EXPONENT - tol


def profile_intervals(
    compute: Any,
    values: Any,
    *,
    names: tuple[str, str, str] = ("A", "beta", "FID_inf"),
    ci_level: float = 0.95,
    which: tuple[str, ...] | None = None,
    calibration: str = "F",
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[bool, bool]]]:
    """(ci, ci_open) profile-likelihood intervals of the named parameters (all by default); see module doc."""
    c, y = _validate(compute, values, 4, f"profile interval of {names[0]} * C^-{names[1]} + {names[2]}")
    lcref = float(np.mean(np.log(c)))
    x = c / np.exp(lcref)
    theta = _fit_theta(x, y)
    return _profile_cis(x, y, theta, lcref, names, ci_level, which, calibration)


def _profile_cis(
    x: np.ndarray,
    y: np.ndarray,
    theta: np.ndarray,
    lcref: float,
    names: tuple[str, str, str],
    ci_level: float,
    which: tuple[str, ...] | None,
    calibration: str = "F",
    floor_max: float | None = None,
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[bool, bool]]]:
    prof = _Profile(x, y, theta, lcref, floor_max)
    thr = profile_threshold(prof.rss_min, y.size, ci_level, calibration=calibration)
    ci, ci_open = {}, {}
    for j, name in enumerate(names):
        if which is not None and name not in which:
            continue
        (lo, hi), op = prof.interval(j, thr)
        if j == 0:  # log A -> A
            lo, hi = float(np.exp(lo)), float(np.exp(hi))
        ci[name], ci_open[name] = (lo, hi), op
    return ci, ci_open


def _percentile_ci(arr: np.ndarray, names: tuple[str, ...], level: float) -> dict[str, tuple[float, float]]:
    """Percentile interval per column of `arr` [B, len(names)]; empty below MIN_BOOT_OK rows."""
    if len(arr) < MIN_BOOT_OK:
        return {}
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {n: tuple(float(v) for v in np.percentile(arr[:, i], q)) for i, n in enumerate(names)}


def _params(theta: np.ndarray, log_c_ref: float) -> tuple[float, float, float]:
    """(A, exponent, floor) in original compute units of a fit theta = (log a, exponent, floor) made on C / c_ref."""
    return float(np.exp(theta[0] + theta[1] * log_c_ref)), float(theta[1]), float(theta[2])


def _refit_params(c: np.ndarray, y: np.ndarray, c_ref: float, start: np.ndarray | None) -> tuple[float, float, float]:
    """(A, exponent, floor) of a refit on (c, y), x normalised by c_ref."""
    return _params(_fit_theta(c / c_ref, y, start=start), float(np.log(c_ref)))


def noise_draw(values: np.ndarray, se: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values redrawn within their sampling noise: log-normal with log-sd = se / value (stays positive)."""
    return values * np.exp(rng.standard_normal(values.size) * se / values)


def sampling_noise_block(
    draw: Callable[[np.random.Generator, bool], tuple[np.ndarray, np.ndarray]],
    fit: PowerLawFit,
    c_ref: float,
    start: np.ndarray,
    *,
    n_rep: int,
    seed: int,
) -> dict[str, Any]:
    """Refits on values redrawn within their noise (draw(rng, False)), and jointly with a point bootstrap
    (draw(rng, True)): {n_rep, n_ok, param_sd, param_sd_log (of log A), param_interval, sd_over_ci_width (for A on
    the log scale: sd of log A over the width of log A's interval), ci_joint, n_joint_ok}."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"noise": [], "joint": []}
    for kind, resample in (("noise", False), ("joint", True)):
        for _ in range(n_rep):
            c, y = draw(rng, resample)
            if np.unique(c).size < 3:
                continue
            try:
                out[kind].append(_refit_params(c, y, c_ref, start))
            except (ValueError, np.linalg.LinAlgError):
                continue
    noise, joint = np.array(out["noise"]).reshape(-1, 3), np.array(out["joint"]).reshape(-1, 3)
    names = fit.names
    block: dict[str, Any] = {"n_rep": n_rep, "n_ok": len(noise), "n_joint_ok": len(joint)}
    block["param_sd"] = {n: float(np.std(noise[:, i], ddof=1)) if len(noise) > 1 else None for i, n in enumerate(names)}
    block["param_interval"] = {k: list(v) for k, v in _percentile_ci(noise, names, fit.ci_level).items()}
    block["sd_over_ci_width"] = {
        n: (
            block["param_sd"][n] / (fit.ci[n][1] - fit.ci[n][0])
            if block["param_sd"][n] is not None and n in fit.ci and fit.ci[n][1] > fit.ci[n][0]
            else None
        )
        for n in names[1:]
    }
    # A spans orders of magnitude (its interval is wide whenever the exponent's is): its spread is on log A.
    a, ci_a = names[0], fit.ci.get(names[0])
    log_a = np.log(noise[:, 0][noise[:, 0] > 0]) if len(noise) else np.array([])
    block["param_sd_log"] = {a: float(np.std(log_a, ddof=1)) if log_a.size > 1 else None}
    block["sd_over_ci_width"][a] = (
        block["param_sd_log"][a] / float(np.log(ci_a[1] / ci_a[0]))
        if block["param_sd_log"][a] is not None and ci_a and ci_a[0] > 0 and ci_a[1] > ci_a[0]
        else None
    )
    block["ci_joint"] = {k: list(v) for k, v in _percentile_ci(joint, names, fit.ci_level).items()}
    return block


def fit_power_law(
    compute: Any,
    values: Any,
    *,
    names: tuple[str, str, str] = ("A", "beta", "FID_inf"),
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
    held_out: bool = True,
    interval: str | None = "profile",
    value_se: Any = None,
    n_noise: int = 200,
) -> PowerLawFit:
    """Fit y = A * C^-exponent + floor (log-space least squares, robust init) with intervals.

    `interval`: "profile" (default; F-calibrated profile likelihood, see module doc) or "bootstrap" (percentile
    bootstrap over points, the earlier default); None gives no `ci`. The percentile bootstrap over points
    (n_boot resamples, numpy Generator seeded by `seed`; resamples with < 3 distinct computes skipped; no
    interval below MIN_BOOT_OK refits) always fills `ci_bootstrap` and `samples`. With 3 points (no degrees of
    freedom) there is no profile interval. `value_se`: per-point standard errors of the values; adds
    `sampling_noise` (n_noise redraws); a NaN one is a point without a measured error (redrawn as exact), a
    negative one a FitError. With `held_out`, also fit without the largest compute and report the prediction error
    there.
    """
    if interval not in (*INTERVAL_METHODS, None):
        raise ValueError(f"interval must be one of {INTERVAL_METHODS} or None, got {interval!r}")
    if not 0.0 < ci_level < 1.0:
        raise FitError(f"ci_level must be in (0, 1), got {ci_level!r}")
    what = f"fit of {names[0]} * C^-{names[1]} + {names[2]}"
    c_raw = np.asarray(compute, dtype=np.float64).ravel()
    se_raw = None if value_se is None else np.asarray(value_se, dtype=np.float64).ravel()
    if se_raw is not None and se_raw.shape != c_raw.shape:
        raise FitError(f"{what}: {c_raw.size} compute values but {se_raw.size} standard errors")
    if se_raw is not None and bool((se_raw < 0).any()):  # clipped to 0, it read as "no sampling noise"
        raise FitError(f"{what}: standard errors must be >= 0, got {float(se_raw[se_raw < 0][0])!r}")
    c, y = _validate(compute, values, 3, what)
    lcref = float(np.mean(np.log(c)))
    c_ref = float(np.exp(lcref))  # normalise C (~1e15) so log a is O(1)
    x = c / c_ref
    theta = _fit_theta(x, y)
    rmse = float(np.sqrt(np.mean(_residuals(theta, x, np.log(y)) ** 2)))
    A, b, f = _params(theta, lcref)

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        idx = rng.integers(0, c.size, c.size)
        if np.unique(c[idx]).size < 3:
            continue
        try:
            samples.append(_refit_params(c[idx], y[idx], c_ref, theta))
        except (ValueError, np.linalg.LinAlgError):
            continue
    ci_boot = _percentile_ci(np.array(samples).reshape(-1, 3), names, ci_level)
    ci: dict[str, tuple[float, float]] = {}
    ci_open: dict[str, tuple[bool, bool]] = {}
    if interval == "bootstrap":
        ci = dict(ci_boot)
    elif interval == "profile" and c.size > 3:
        ci, ci_open = _profile_cis(x, y, theta, lcref, names, ci_level, None)
    fit = PowerLawFit(
        A=A,
        exponent=b,
        floor=f,
        names=names,
        ci=ci,
        ci_level=ci_level,
        n_points=int(c.size),
        n_boot=n_boot,
        n_boot_ok=len(samples),
        rmse_log=rmse,
        compute_range=(float(c.min()), float(c.max())),
        samples=np.array(samples) if samples else None,
        ci_method=interval or "none",
        ci_bootstrap=ci_boot,
        ci_open=ci_open,
        min_value=float(y.min()),
    )
    if se_raw is not None:
        ok = np.isfinite(c_raw) & np.isfinite(np.asarray(values, dtype=np.float64).ravel())
        se = np.nan_to_num(se_raw[ok], nan=0.0).clip(min=0.0)

        def draw(g: np.random.Generator, resample: bool) -> tuple[np.ndarray, np.ndarray]:
            idx = g.integers(0, c.size, c.size) if resample else np.arange(c.size)
            return c[idx], noise_draw(y[idx], se[idx], g)

        fit.sampling_noise = sampling_noise_block(draw, fit, c_ref, theta, n_rep=n_noise, seed=seed + 1)
        fit.sampling_noise["max_rel_se"] = float(np.max(se / y))
    if held_out:
        fit.held_out = held_out_check(c, y, names=names)
    fit.floor_bound = floor_bound(c, y, theta, names=names, ci_level=ci_level, intervals=interval == "profile")
    return fit


def floor_bound(
    compute: Any,
    values: Any,
    theta: np.ndarray | None = None,
    *,
    names: tuple[str, str, str] = ("A", "beta", "FID_inf"),
    ci_level: float = 0.95,
    intervals: bool = True,
) -> dict[str, Any]:
    """Does the fit's floor sit at its upper bound, the lowest value measured, and what does the bound change?

    The floor of a law falling towards it cannot lie above a value the law passes through, so the fit keeps it
    below min y. Measured values are noisy, and a frontier (the lowest value at each compute) is biased low, so
    the bound can hold the floor down where the data alone would put it higher; the exponent and the held-out
    prediction are then conditional on the bound. {"at_bound": False} when the floor is inside; else
    {"at_bound": True, "bound", "binds" (the free fit's floor lies above the bound: the bound changes the answer),
    "free": the same law with the floor free up to max y (params, profile `ci` and
    `ci_open` of the exponent and floor, `held_out_rel_error` of its refit without the largest compute), "F" (the
    F statistic of the bound: (RSS_bound - RSS_free) / (RSS_free / (n - 3))), "rejected" (the bound fit lies
    outside the free fit's `ci_level` profile region, i.e. the data reject the bound)}.
    `theta`: the bound fit (log a, exponent, floor) with x = C / geometric mean of C, as `fit_power_law` makes it.
    """
    c, y = _validate(compute, values, 3, f"floor bound of {names[0]} * C^-{names[1]} + {names[2]}")
    lcref = float(np.mean(np.log(c)))
    x = c / np.exp(lcref)
    theta = _fit_theta(x, y) if theta is None else np.asarray(theta, dtype=np.float64)
    ymin = float(y.min())
    if theta[2] < ymin * (1 - 1e-6):
        return {"at_bound": False}
    free = _fit_theta(x, y, floor_max=float(y.max()))
    rss_bound = float(np.sum(_residuals(theta, x, np.log(y)) ** 2))
    rss_free = min(float(np.sum(_residuals(free, x, np.log(y)) ** 2)), rss_bound)
    dof = y.size - 3
    # "binds": the free fit puts the floor above the bound, so the bound changes the answer
    out: dict[str, Any] = {"at_bound": True, "bound": ymin, "binds": bool(free[2] > ymin * (1 + 1e-6))}
    out["free"] = {"params": dict(zip(names, _params(free, lcref))), "rss": rss_free}
    if dof > 0:
        out["F"] = float((rss_bound - rss_free) / max(rss_free / dof, 1e-300))
        out["rejected"] = bool(rss_bound > profile_threshold(rss_free, y.size, ci_level))
        if intervals and y.size > 3:
            ci, ci_open = _profile_cis(x, y, free, lcref, names, ci_level, names[1:], floor_max=float(y.max()))
            out["free"]["ci"] = {k: [float(lo), float(hi)] for k, (lo, hi) in ci.items()}
            out["free"]["ci_open"] = {k: [bool(lo), bool(hi)] for k, (lo, hi) in ci_open.items()}
    held = held_out_check(c, y, names=names, floor_free=True)
    if "skipped" not in held:
        out["free"]["held_out_predicted"] = held["predicted"]
        out["free"]["held_out_rel_error"] = held["rel_error"]
    return out


def held_out_check(
    compute: Any,
    values: Any,
    *,
    names: tuple[str, str, str] = ("A", "beta", "FID_inf"),
    floor_free: bool = False,
) -> dict[str, Any]:
    """Fit without the largest compute, predict it; {"compute","observed","predicted","abs_error","rel_error",...}.

    The observed value at the largest compute is the minimum there (the frontier convention).
    Returns {"skipped": reason} when fewer than 3 distinct computes remain.
    `floor_free`: the refit's floor may rise to the largest value it is fitted to, not only the lowest (`floor_bound`).
    """
    c, y = _validate(compute, values, 1, "held-out check")  # finite and positive, as the fits take them
    c_max = float(c.max())
    keep = c < c_max
    if np.unique(c[keep]).size < 3:
        return {"skipped": f"need >= 4 distinct computes for a held-out check, got {np.unique(c).size}"}
    if floor_free:
        lcref = float(np.mean(np.log(c[keep])))
        t = _fit_theta(c[keep] / np.exp(lcref), y[keep], floor_max=float(y[keep].max()))
        params = dict(zip(names, _params(t, lcref)))
        predicted = float(np.exp(t[0] - t[1] * (np.log(c_max) - lcref)) + t[2])
    else:
        fit = fit_power_law(c[keep], y[keep], names=names, n_boot=0, held_out=False, interval=None)
        params, predicted = fit.params, float(fit.predict(c_max))
    observed = float(y[~keep].min())
    return {
        "compute": c_max,
        "observed": observed,
        "predicted": predicted,
        "abs_error": abs(predicted - observed),
        "rel_error": abs(predicted - observed) / abs(observed),
        "n_fit": int(keep.sum()),
        "params": params,
    }


def fit_fid_law(compute: Any, fid: Any, **kwargs: Any) -> PowerLawFit:
    """FID(C) = A * C^-beta + FID_inf."""
    return fit_power_law(compute, fid, names=("A", "beta", "FID_inf"), **kwargs)


def fit_loss_law(compute: Any, loss: Any, **kwargs: Any) -> PowerLawFit:
    """L(C) = A * C^-alpha + L_inf."""
    return fit_power_law(compute, loss, names=("A", "alpha", "L_inf"), **kwargs)
