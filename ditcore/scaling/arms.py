"""Architecture arms (e.g. DiT vs U-Net): each arm's compute-frontier law side by side, and where they cross.

Each arm's points give its own compute frontier and FID(C) = A C^-beta + FID_inf (profile intervals, see
`powerlaw`). Peebles & Xie 2023 compare DiT with U-Net backbones at matched compute; a steeper exponent with a
worse constant means one arm overtakes the other at some compute C_x where the fitted curves cross.

Crossing search: on log C over the window [min compute / 10^near, max compute * 10^near] of both arms' data
(`near_decades`), sign changes of log f_1 - log f_2 are refined by root finding. A crossing inside the compute
range measured for both arms is "within"; elsewhere in the window it is "near" (extrapolated for at least one
arm). Its interval: for each pair of bootstrap rows of the two arms (percentile bootstrap over frontier points;
the arms are independent), the crossing nearest the fitted one; `p_cross` is the share of pairs that cross in the
window at all, and the interval is over those pairs only, so read it together with p_cross.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
from scipy.optimize import brentq

from ditcore.scaling.frontier import fit_frontier_law
from ditcore.scaling.powerlaw import MIN_BOOT_OK, FitError, PowerLawFit

_GRID = 400


def _crossings(p1: np.ndarray, p2: np.ndarray, lo: float, hi: float) -> list[float]:
    """Computes in [lo, hi] where A1 C^-b1 + f1 = A2 C^-b2 + f2, for parameter rows p = (A, b, f)."""

    def d(lc: float | np.ndarray) -> Any:
        c = np.exp(lc)
        return np.log(p1[0] * c ** -p1[1] + p1[2]) - np.log(p2[0] * c ** -p2[1] + p2[2])

    grid = np.linspace(np.log(lo), np.log(hi), _GRID)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        vals = d(grid)
    out = []
    change = np.isfinite(vals[:-1]) & np.isfinite(vals[1:]) & (np.sign(vals[:-1]) * np.sign(vals[1:]) < 0)
    for i in np.flatnonzero(change):
        out.append(float(np.exp(brentq(d, grid[i], grid[i + 1], xtol=1e-10))))
    return out


def _row(fit: PowerLawFit) -> np.ndarray:
    return np.array([fit.A, fit.exponent, fit.floor])


def _pair(
    name1: str,
    fit1: PowerLawFit,
    name2: str,
    fit2: PowerLawFit,
    near_decades: float,
    ci_level: float,
    seed: int,
    metric: str,
) -> dict[str, Any]:
    """Crossing info of two arms' fitted laws (see module doc)."""
    (lo1, hi1), (lo2, hi2) = fit1.compute_range, fit2.compute_range
    w_lo, w_hi = min(lo1, lo2) / 10**near_decades, max(hi1, hi2) * 10**near_decades
    ov_lo, ov_hi = max(lo1, lo2), min(hi1, hi2)
    r1, r2 = _row(fit1), _row(fit2)
    xs = _crossings(r1, r2, w_lo, w_hi)

    def lower_at(c: float) -> str:
        return name1 if float(fit1.predict(c)) < float(fit2.predict(c)) else name2

    out: dict[str, Any] = {
        "arms": [name1, name2],
        "window": [w_lo, w_hi],
        "overlap": [ov_lo, ov_hi] if ov_lo <= ov_hi else None,
        "crossings": xs,
        "lower_at_window_start": lower_at(w_lo),
        "lower_at_window_end": lower_at(w_hi),
    }
    s1, s2 = fit1.samples, fit2.samples
    boot: list[float] = []
    n_pairs = 0
    if s1 is not None and s2 is not None and min(len(s1), len(s2)) >= MIN_BOOT_OK:
        rng = np.random.default_rng(seed)
        n_pairs = min(len(s1), len(s2))
        j2 = rng.permutation(len(s2))[:n_pairs]
        target = np.log(xs[0]) if xs else None
        for a, b in zip(s1[:n_pairs], s2[j2]):
            found = _crossings(a, b, w_lo, w_hi)
            if found:
                boot.append(
                    found[int(np.argmin([abs(np.log(x) - target) for x in found]))] if target is not None else found[0]
                )
    out["n_boot_pairs"] = n_pairs
    out["p_cross"] = len(boot) / n_pairs if n_pairs else None
    q = [100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2]
    out["compute_ci"] = [float(v) for v in np.percentile(boot, q)] if len(boot) >= MIN_BOOT_OK else None
    pc = "" if out["p_cross"] is None else f"; a crossing appears in {100 * out['p_cross']:.0f}% of bootstrap resamples"
    if xs:
        # Two saturating laws can cross twice (a steep arm with a high floor overtakes, then is overtaken again):
        # each crossing with the arm that is lower after it; the first is the headline, the rest later_crossings.
        found = [{"compute": x, "leader_after": lower_at(x * 1.001), "within_range": ov_lo <= x <= ov_hi} for x in xs]
        first, later = found[0], found[1:]
        cx, after, within = first["compute"], first["leader_after"], first["within_range"]
        before = lower_at(cx / 1.001)
        out.update(exists=True, compute=cx, within_range=within, leader_before=before, leader_after=after)
        out["later_crossings"] = later
        ci = out["compute_ci"]
        ci_txt = f" ({int(ci_level * 100)}% interval [{ci[0]:.3g}, {ci[1]:.3g}])" if ci else " (no interval)"
        where = (
            "inside the compute range measured for both arms"
            if within
            else "outside the compute range measured for both arms, i.e. an extrapolation"
        )
        more = "".join(
            f"; the fitted {lc['leader_after']} curve is lower again from C = {lc['compute']:.3g} FLOPs"
            + (" (inside the measured range)" if lc["within_range"] else " (an extrapolation)")
            for lc in later
        )
        out["statement"] = (
            f"The fitted {after} curve overtakes {before} at C = {cx:.3g} FLOPs{ci_txt}, {where}{pc}{more}."
        )
    else:
        lead = lower_at(np.sqrt(w_lo * w_hi))
        out.update(
            exists=False, compute=None, within_range=False, leader_before=lead, leader_after=lead, later_crossings=[]
        )
        caveat = ""
        if out["p_cross"] is not None and out["p_cross"] > 1 - ci_level:
            caveat = ", so the data do not exclude a crossing"
        out["statement"] = (
            f"The fitted {name1} and {name2} curves do not cross between {w_lo:.3g} and {w_hi:.3g} "
            f"FLOPs: {lead} has the lower fitted {metric} throughout{pc}{caveat}."
        )
    return out


def compare_arms(
    arms: dict[str, list[dict]],
    metric: str = "fid",
    *,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
    near_decades: float = 0.5,
    se_key: str | None = None,
    fits_out: dict[str, tuple[PowerLawFit, list[dict]]] | None = None,
) -> dict[str, Any]:
    """Fit each arm's frontier law and compare: {"metric", "arms": {arm: {...}}, "crossings": [...], "crossing"}.

    arms.<arm>: beta, beta_ci, beta_ci_open, law (PowerLawFit.to_dict()), n_frontier, frontier_models,
    compute_range; or {"error": reason} when the arm cannot be fitted. crossings: one entry per pair of fitted
    arms with arms, exists, compute, compute_ci, p_cross, within_range, leader_before, leader_after, window,
    overlap, crossings (all found), later_crossings ([{compute, leader_after, within_range}] after the first),
    statement (a sentence to print, naming every crossing), and exponent_difference {value, ci}
    (bootstrap percentile of beta_1 - beta_2). "crossing" is crossings[0] when exactly two arms were fitted.
    fits_out, when given, receives {arm: (PowerLawFit, frontier points)} of every fitted arm (for plots).
    """
    out: dict[str, Any] = {"metric": metric, "arms": {}, "crossings": []}
    fits: dict[str, PowerLawFit] = {}
    for name, pts in arms.items():
        try:
            fit, front = fit_frontier_law(pts, metric, n_boot=n_boot, ci_level=ci_level, seed=seed, se_key=se_key)
        except FitError as e:
            out["arms"][name] = {"error": f"arm {name}: {e}"}
            continue
        fits[name] = fit
        if fits_out is not None:
            fits_out[name] = (fit, front)
        e = fit.names[1]
        out["arms"][name] = {
            "beta": fit.exponent,
            "beta_ci": list(fit.ci[e]) if e in fit.ci else None,
            "beta_ci_open": list(fit.ci_open[e]) if e in fit.ci_open else None,
            "law": fit.to_dict(),
            "n_frontier": len(front),
            "frontier_models": sorted({str(p.get("model")) for p in front}),
            "compute_range": list(fit.compute_range),
        }
    for k, (a, b) in enumerate(combinations(fits, 2)):
        info = _pair(a, fits[a], b, fits[b], near_decades, ci_level, seed + 7919 * (k + 1), metric)
        sa, sb = fits[a].samples, fits[b].samples
        diff: dict[str, Any] = {"value": fits[a].exponent - fits[b].exponent, "ci": None}
        if sa is not None and sb is not None and min(len(sa), len(sb)) >= MIN_BOOT_OK:
            m = min(len(sa), len(sb))
            d = sa[:m, 1] - np.random.default_rng(seed + k).permutation(sb[:, 1])[:m]
            diff["ci"] = [float(v) for v in np.percentile(d, [100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2])]
        info["exponent_difference"] = diff
        out["crossings"].append(info)
    out["crossing"] = out["crossings"][0] if len(fits) == 2 else None
    return out


ARM_KEYS = ("beta", "beta_ci", "beta_ci_open", "n_frontier", "frontier_models", "compute_range", "error")


def flat_arms(comparison: dict[str, Any]) -> dict[str, Any]:
    """{arm: {beta, beta_ci, beta_ci_open, params, n_frontier, frontier_models, compute_range} or {error}} of a
    `compare_arms` result (the per-arm view a report exposes as arms.<arm>.beta / arms.<arm>.beta_ci)."""
    out: dict[str, Any] = {}
    for name, a in (comparison.get("arms") or {}).items():
        row = {k: a[k] for k in ARM_KEYS if k in a}
        if "law" in a:
            row["params"] = a["law"].get("params")
        out[name] = row
    return out
