"""Scaling-law fits: power-law recovery within its intervals, held-out check, frontier, isoFLOP exponent."""

from __future__ import annotations

import numpy as np
import pytest

from ditcore.scaling import (
    FitError,
    compute_frontier,
    fit_fid_law,
    fit_loss_law,
    fit_parabola,
    held_out_check,
    isoflop_analysis,
    minimum_kind,
)

A_TRUE, BETA_TRUE, FLOOR_TRUE = 5.0e5, 0.35, 4.0


def _noisy_fid(seed: int, n: int = 16, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """FID = A C^-beta + FID_inf on 1e14..1e18 FLOPs with multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    c = np.logspace(14, 18, n)
    y = (A_TRUE * c**-BETA_TRUE + FLOOR_TRUE) * np.exp(rng.normal(0.0, noise, n))
    return c, y


def test_fid_law_recovers_known_parameters_within_its_intervals():
    # One data seed; interval coverage over many seeds is checked in test_scaling_intervals.py.
    c, y = _noisy_fid(seed=1)
    fit = fit_fid_law(c, y, n_boot=150, seed=0)
    truth = {"A": A_TRUE, "beta": BETA_TRUE, "FID_inf": FLOOR_TRUE}
    assert set(fit.ci) == set(truth)
    for name, value in truth.items():
        lo, hi = fit.ci[name]
        assert lo <= value <= hi, (name, value, (lo, hi), fit.params)
        assert lo <= fit.params[name] <= hi
    assert fit.exponent == pytest.approx(BETA_TRUE, abs=0.1)
    assert fit.floor == pytest.approx(FLOOR_TRUE, rel=0.25)
    assert fit.n_boot_ok >= 140
    # the fitted curve tracks the truth over the sampled range
    np.testing.assert_allclose(fit.predict(c), A_TRUE * c**-BETA_TRUE + FLOOR_TRUE, rtol=0.05)
    lo, hi = fit.band(c)
    assert np.all(lo <= fit.predict(c) + 1e-9) and np.all(fit.predict(c) <= hi + 1e-9)


def test_bootstrap_is_deterministic_for_a_seed():
    c, y = _noisy_fid(seed=1, n=10)
    a = fit_fid_law(c, y, n_boot=30, seed=7).to_dict()
    b = fit_fid_law(c, y, n_boot=30, seed=7).to_dict()
    assert a == b


def test_held_out_error_is_reported():
    c, y = _noisy_fid(seed=2, n=8, noise=0.01)
    fit = fit_fid_law(c, y, n_boot=20)
    ho = fit.held_out
    assert ho["compute"] == c.max() and ho["n_fit"] == 7
    assert ho["observed"] == pytest.approx(y[-1])
    assert ho["abs_error"] == pytest.approx(abs(ho["predicted"] - ho["observed"]))
    assert ho["rel_error"] < 0.1  # low noise: the extrapolation one budget out is close
    assert "held_out" in fit.to_dict() and fit.to_dict()["dof"] == 5
    # too few budgets for a held-out fit: reported, not raised
    assert "skipped" in held_out_check(c[:3], y[:3])


def test_loss_law_names_and_noise_free_recovery():
    c = np.logspace(15, 19, 9)
    loss = 2.0 * (c / 1e15) ** -0.2 + 0.5
    fit = fit_loss_law(c, loss, n_boot=10)
    assert set(fit.params) == {"A", "alpha", "L_inf"}
    assert fit.params["alpha"] == pytest.approx(0.2, rel=1e-4)
    assert fit.params["L_inf"] == pytest.approx(0.5, rel=1e-4)
    assert fit.params["A"] == pytest.approx(2.0 * 1e15**0.2, rel=1e-3)


@pytest.mark.parametrize(
    "c, y, msg",
    [
        ([1e15, 1e16], [10.0, 8.0], "at least 3 points"),
        ([1e15, 1e15, 1e15, 1e15], [10.0, 9.0, 8.0, 7.0], "at least 3 points"),
        ([1e15, 1e16, 1e17], [10.0, -1.0, 8.0], "must be > 0"),
        ([1e15, 1e16], [10.0], "2 compute values but 1 metric"),
        # Not dropped silently: a fit of the rest would be exact on 3 points and say nothing of the NaNs.
        ([1e15, 1e16, 1e17, 1e18, 1e19], [10.0, float("nan"), 8.0, 7.0, 6.5], r"1 point\(s\) are not finite.*point 1"),
        ([1e15, float("inf"), 1e17, 1e18], [10.0, 9.0, 8.0, 7.0], r"not finite \(e.g. point 1: compute inf"),
    ],
)
def test_too_few_or_bad_points_raise_clear_errors(c, y, msg):
    with pytest.raises(FitError, match=msg):
        fit_fid_law(c, y)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_parabola_through_a_non_finite_value_is_a_clear_error_not_an_optimum(bad):
    x = np.log([1e5, 1e6, 1e7, 1e8])
    with pytest.raises(FitError, match=r"isoFLOP parabola: point 2 is not finite"):
        fit_parabola(x, [5.0, 2.0, bad, 6.0])


def test_frontier_is_min_over_models_per_budget_with_tie_to_less_compute():
    pts = [
        {"model": "S", "params": 1e6, "budget_flops": 1e15, "flops": 1.0e15, "fid": 50.0},
        {"model": "M", "params": 4e6, "budget_flops": 1e15, "flops": 1.1e15, "fid": 50.0},
        {"model": "S", "params": 1e6, "budget_flops": 1e16, "flops": 1e16, "fid": 40.0},
        {"model": "M", "params": 4e6, "budget_flops": 1e16, "flops": 1e16, "fid": 30.0},
        {"model": "L", "params": 9e6, "budget_flops": 1e16, "flops": 1e16, "fid": None},
    ]
    front = compute_frontier(pts, "fid")
    assert [(p["model"], p["fid"]) for p in front] == [("S", 50.0), ("M", 30.0)]


def test_parabola_minimum_and_edge_flag():
    x = np.log(np.array([1e6, 2e6, 4e6, 8e6, 16e6]))
    y = (x - np.log(4e6)) ** 2 + 3.0
    par = fit_parabola(x, y)
    assert par["interior"] and par["n_opt"] == pytest.approx(4e6, rel=1e-6) and par["metric_opt"] == pytest.approx(3.0)
    par = fit_parabola(x, -x)  # monotone: optimum at the largest sampled size, flagged
    assert not par["interior"] and par["n_opt"] == pytest.approx(16e6)
    # A convex parabola with its vertex inside the range, bent there by a far-off largest size, while the smallest
    # size is the best measured (a quickstart budget): not bracketed, so N* is the smallest size, flagged.
    x4, y4 = np.log(np.array([1.8e5, 6.9e5, 1.18e6, 3.87e6])), np.array([500.0, 692.0, 833.0, 3007.0])
    a, b, _ = np.polyfit(x4, y4, 2)
    assert a > 0 and x4.min() < -b / (2 * a) < x4.max()  # the vertex alone would call it interior
    par = fit_parabola(x4, y4)
    assert not par["interior"] and par["n_opt"] == pytest.approx(1.8e5) and par["metric_opt"] == 500.0
    assert par["method"] == "edge"


def test_bracketed_minimum_stays_interior_when_far_sizes_bend_the_parabola():
    """A quickstart budget with a smaller model added (FID at 4.8e11 FLOPs): the second-smallest size is the best
    measured, worse sizes on both sides, but the parabola over all five sizes puts its vertex below the smallest.
    The minimum is bracketed: N* comes from the parabola through the best size and its two neighbours."""
    n = np.array([6.25e4, 1.8e5, 6.9e5, 1.18e6, 3.87e6])
    y = np.array([220.2, 214.2, 615.1, 760.2, 970.6])
    x = np.log(n)
    a, b, _ = np.polyfit(x, y, 2)
    assert not (a > 0 and x.min() <= -b / (2 * a) <= x.max())  # the all-size parabola alone would call it an edge
    par = fit_parabola(x, y)
    assert par["interior"] and par["method"] == "local"
    assert 6.25e4 < par["n_opt"] < 6.9e5 and par["metric_opt"] <= 214.2
    assert par["fit_range"] == pytest.approx([np.log(6.25e4), np.log(6.9e5)])
    la, lb, lc = np.polyfit(x[:3], y[:3], 2)
    assert par["coef"] == pytest.approx([la, lb, lc]) and par["log_n_opt"] == pytest.approx(-lb / (2 * la))
    # Repeated sizes (two points of one size at a budget): each size at its lowest value.
    par2 = fit_parabola(np.append(x, x[2]), np.append(y, 400.0))
    assert par2["method"] == "local" and par2["coef"] == pytest.approx(np.polyfit(x[:3], [220.2, 214.2, 400.0], 2))


def test_isoflop_recovers_known_optimal_size_exponent():
    # metric(N, C) = m0(C) + k2 (log N - log N*(C))^2 with N*(C) = k C^a, plus small noise
    a_true, k_true = 0.5, 2e-2
    rng = np.random.default_rng(0)
    pts = []
    for c in np.logspace(15, 19, 5):
        n_star = k_true * c**a_true
        for n in n_star * np.exp(np.linspace(-1.5, 1.5, 7)):
            val = 20.0 * c**-0.05 + 4.0 * (np.log(n) - np.log(n_star)) ** 2 + rng.normal(0, 0.05)
            pts.append({"budget_flops": c, "flops": c, "params": n, "model": f"N{n:.3g}", "fid": val})
    res = isoflop_analysis(pts, "fid", n_boot=100, seed=0)
    law = res["n_opt_law"]
    assert len(res["budgets"]) == 5 and law["all_interior"]
    assert law["params"]["a"] == pytest.approx(a_true, abs=0.02)
    lo, hi = law["ci"]["a"]
    assert lo <= a_true <= hi
    assert law["n_boot_ok"] >= 90
    with pytest.raises(FitError, match=">= 2 budgets"):
        isoflop_analysis([p for p in pts if p["budget_flops"] == pts[0]["budget_flops"]], "fid")


def _four_size_grid(rel_se: float, seed: int = 0) -> list[dict]:
    """10 budgets x 4 sizes (the quickstart's shape) around N*(C) = 2e-2 C^0.5, each FID with its standard error."""
    rng = np.random.default_rng(seed)
    pts = []
    for c in np.logspace(15, 17, 10):
        n_star = 2e-2 * c**0.5
        for n in n_star * np.exp(np.array([-1.2, -0.3, 0.5, 1.4])):
            fid = 50.0 * (1 + 0.3 * (np.log(n) - np.log(n_star)) ** 2)
            se = rel_se * fid
            pts.append({"budget_flops": c, "params": n, "fid": fid + rng.normal(0, se), "fid_se": se})
    return pts


def test_isoflop_interval_with_four_sizes_redraws_values_within_their_noise():
    # Resampling 4 sizes with replacement keeps 3 distinct ones in only ~2/3 of draws, so a bootstrap that needs
    # that at all 10 budgets at once survived ~1 in 70 resamples: the quickstart's N*(C) had no interval.
    quiet, noisy = (isoflop_analysis(_four_size_grid(s), "fid", n_boot=100, seed=0) for s in (0.01, 0.05))
    for res in (quiet, noisy):
        law = res["n_opt_law"]
        assert law["n_boot_ok"] == 100
        lo, hi = law["ci"]["a"]
        assert lo <= 0.5 <= hi
        assert all("se" not in r for r in res["budgets"])  # the redraw's noise stays out of the report
    width = [r["n_opt_law"]["ci"]["a"][1] - r["n_opt_law"]["ci"]["a"][0] for r in (quiet, noisy)]
    assert width[1] > 2 * width[0]  # the points' noise reaches the interval


def test_minimum_kind_names_the_edge_a_bound_sits_at():
    # a 10-budget quickstart-like grid where the smallest size wins the small budgets: those minima are upper bounds
    pts = _four_size_grid(0.01)
    for p in pts:
        if p["budget_flops"] < 1e16:
            p["fid"] = 50.0 * (p["params"] / 1e5) ** 0.3
    kinds = [minimum_kind(r) for r in isoflop_analysis(pts, "fid", n_boot=10)["budgets"]]
    assert kinds == ["smallest"] * 5 + ["interior"] * 5
    row = {"interior": False, "params": [1.0, 2.0, 4.0], "n_opt": 4.0}
    assert minimum_kind(row) == "largest" and minimum_kind({**row, "n_opt": 1.0}) == "smallest"


def test_an_edge_minimum_at_the_largest_size_is_largest_though_exp_log_rounds_below_it():
    # exp(log 1.6e7) = 15999999.999999998: the largest size, which a `n_opt >= max(params)` test called "smallest"
    pts = [
        {"params": n, "budget_flops": c, "train_flops": c, "fid": 100.0 / (n / 1e6) ** 0.2 / (c / 1e15) ** 0.1}
        for n in (1e6, 4e6, 1.6e7)
        for c in (1e15, 1e16, 1e17)
    ]
    rows = isoflop_analysis(pts, "fid", n_boot=10)["budgets"]
    assert [r["n_opt"] < 1.6e7 for r in rows] == [True] * 3  # the rounding this guards against
    assert [minimum_kind(r) for r in rows] == ["largest"] * 3


def test_held_out_check_and_interval_level_take_bad_input_like_the_fits():
    from ditcore.scaling import FitError
    from ditcore.scaling.powerlaw import fit_power_law, held_out_check

    c, y = [1e11, 1e12, 1e13, 1e14, 1e15], [9.0, 6.0, 4.5, 3.8, 3.5]
    # a NaN point is refused, naming it, as fit_power_law refuses it (callers leave such points out themselves)
    with pytest.raises(FitError, match=r"held-out check: 1 point\(s\) are not finite \(e.g. point 3: compute nan"):
        held_out_check([*c[:3], float("nan"), *c[3:]], [*y[:3], 2.0, *y[3:]])
    assert "skipped" not in held_out_check(c, y)
    with pytest.raises(FitError, match=r"must be > 0 for a log-space fit; 1 are not \(e.g. compute 1e\+15, value 0\)"):
        held_out_check(c, [*y[:4], 0.0])  # was a ZeroDivisionError
    with pytest.raises(FitError, match=r"ci_level must be in \(0, 1\), got 1.5"):
        fit_power_law(c, y, ci_level=1.5)  # was a brentq "is NaN" ValueError


def test_negative_standard_errors_are_refused_and_one_compute_has_a_band():
    # A negative se was clipped to 0 and read as "no sampling noise"; band() of one compute value raised IndexError.
    from ditcore.scaling.powerlaw import FitError, fit_power_law

    c = np.geomspace(1e11, 5e12, 8)
    y = 3e5 * c**-0.3 + 50.0
    with pytest.raises(FitError, match="standard errors must be >= 0, got -"):
        fit_power_law(c, y, n_boot=20, value_se=-0.05 * y)
    fit = fit_power_law(c, y * (1 + 0.01 * np.sin(np.arange(8))), n_boot=40)
    lo, hi = fit.band(1e13)
    assert lo.shape == hi.shape == (1,) and lo[0] <= fit.predict(1e13) <= hi[0]
