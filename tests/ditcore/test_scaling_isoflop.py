"""Compute-optimal data D*(C) from isoFLOP minima (Hoffmann et al. 2022 approach 2) and the parametric loss
surface L(N, D) (approach 3), recovered from synthetic grids generated with known exponents."""

from __future__ import annotations

import numpy as np
import pytest

from ditcore.scaling import FitError, fit_loss_surface, images_of, isoflop_analysis

# Known surface L(N, D) = E + A / N^alpha + B / D^beta; at fixed C = K N D the optimum is
# N* ~ C^(beta / (alpha + beta)), D* ~ C^(alpha / (alpha + beta)).
E, A, B, ALPHA, BETA = 1.7, 400.0, 4000.0, 0.34, 0.28
K = 1536.0  # train FLOPs per image per parameter (6 x 256 tokens)


def _loss(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return E + A * n**-ALPHA + B * d**-BETA


def _grid(noise: float, seed: int = 0, images_key: str = "train_flops_per_image") -> list[dict]:
    """5 budgets x 7 sizes centred (on a fine search, not the closed form) on each budget's optimum."""
    rng = np.random.default_rng(seed)
    pts = []
    search = np.exp(np.linspace(np.log(1e2), np.log(1e13), 4000))
    for c in np.logspace(15, 19, 5):
        n_star = search[np.argmin(_loss(search, c / (K * search)))]
        for n in n_star * np.exp(np.linspace(-1.5, 1.5, 7)):
            p = {
                "budget_flops": c,
                "flops": c,
                "params": n,
                "model": f"N{n:.3g}",
                "val_loss": float(_loss(n, c / (K * n)) * np.exp(rng.normal(0, noise))),
            }
            if images_key == "train_flops_per_image":
                p["train_flops_per_image"] = K * n
            elif images_key == "images_seen":
                p["images_seen"] = c / (K * n)
            pts.append(p)
    return pts


def test_images_are_read_or_derived_from_flops():
    assert images_of({"images_seen": 1000}) == 1000
    assert images_of({"flops": 6e12, "train_flops_per_image": 2e9}) == pytest.approx(3000)
    assert images_of({"flops": 6e12}) is None
    assert images_of({"images_seen": 0, "flops": 6e12, "train_flops_per_image": 3e9}) == pytest.approx(2000)


@pytest.mark.parametrize("images_key", ["train_flops_per_image", "images_seen"])
def test_isoflop_recovers_known_n_and_d_exponents(images_key):
    res = isoflop_analysis(_grid(noise=0.005, images_key=images_key), "val_loss", n_boot=100, seed=0)
    a_true, b_true = BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)
    assert res["all_interior"]
    assert res["n_opt_exponent"] == pytest.approx(a_true, abs=0.02)
    assert res["d_opt_exponent"] == pytest.approx(b_true, abs=0.02)
    lo, hi = res["d_opt_exponent_ci"]
    assert lo <= b_true <= hi and hi - lo < 0.1
    lo, hi = res["n_opt_exponent_ci"]
    assert lo <= a_true <= hi
    # C = K N D: the two optima multiply to C / K at every budget
    for row in res["budgets"]:
        assert row["n_opt"] * row["d_opt"] == pytest.approx(row["budget_flops"] / K, rel=1e-6)
    assert res["d_opt_law"]["form"] == "D*(C) = k * C^b" and res["d_opt_law"]["n_boot_ok"] >= 90


def test_isoflop_without_images_reports_why_d_star_is_missing():
    res = isoflop_analysis(_grid(noise=0.005, images_key="none"), "val_loss", n_boot=20)
    assert res["d_opt_exponent"] is None and res["d_opt_exponent_ci"] is None
    assert "images seen unknown" in res["d_opt_law"]["error"]
    assert res["n_opt_exponent"] == pytest.approx(BETA / (ALPHA + BETA), abs=0.02)


def test_loss_surface_recovers_known_parameters():
    fit = fit_loss_surface(_grid(noise=0.005, seed=1), "val_loss", n_boot=40, seed=0)
    p, ci = fit["params"], fit["ci"]
    assert p["alpha"] == pytest.approx(ALPHA, abs=0.03)
    assert p["beta"] == pytest.approx(BETA, abs=0.03)
    for name, truth in (("alpha", ALPHA), ("beta", BETA)):
        assert ci[name][0] <= truth <= ci[name][1], (name, ci[name])
    assert fit["n_opt_exponent"] == pytest.approx(BETA / (ALPHA + BETA), abs=0.03)
    assert fit["d_opt_exponent"] == pytest.approx(ALPHA / (ALPHA + BETA), abs=0.03)
    assert fit["n_opt_exponent"] + fit["d_opt_exponent"] == pytest.approx(1.0)
    assert fit["rmse_log"] < 0.02 and fit["n_boot_ok"] == 40


def test_loss_surface_needs_enough_points():
    with pytest.raises(FitError, match=">= 8 points"):
        fit_loss_surface(_grid(noise=0.0)[:5], "val_loss")


def test_n_star_interval_without_standard_errors_measures_the_values_noise_not_which_sizes_were_drawn():
    """Without `<metric>_se` a budget's points were resampled with replacement: a draw that lost every size on one
    side of the optimum put N* on the edge of what was left, so even noise-free parabolas gave an exponent interval
    of [0.25, 0.84] around 0.5. The residual bootstrap keeps the sizes and agrees with the known-noise redraw."""
    budgets = [1e12 * 10 ** (k / 3) for k in range(7)]
    sizes = [1e5 * 10 ** (k / 2) for k in range(6)]
    widths = {}
    for noise in (0.0, 0.02):
        rng = np.random.default_rng(1)
        pts = []
        for n in sizes:
            for c in budgets:
                n_opt = 3e5 * (c / 1e12) ** 0.5
                v = 100 * (c / 1e12) ** -0.3 * (1 + 0.2 * np.log(n / n_opt) ** 2) * (1 + noise * rng.standard_normal())
                pts.append({"params": n, "budget_flops": c, "val_loss": v, "fid": v, "fid_se": noise * v})
        for metric in ("val_loss", "fid"):  # no standard errors / known standard errors
            res = isoflop_analysis(pts, metric, n_boot=200, seed=0)
            lo, hi = res["n_opt_exponent_ci"]
            assert lo <= 0.5 <= hi, (noise, metric, lo, hi)
            widths[noise, metric] = hi - lo
    assert widths[0.0, "val_loss"] < 0.01  # exact parabolas: no noise to speak of
    assert 0.5 < widths[0.02, "val_loss"] / widths[0.02, "fid"] < 2.0, widths
