"""Architecture arms: exponents side by side and the compute where one arm's frontier law overtakes the other,
on synthetic arms built to cross at a known compute and arms built not to cross."""

from __future__ import annotations

import numpy as np
import pytest

from ditcore.scaling import compare_arms

C_CROSS = 10**16.5


def _arm(name: str, A: float, beta: float, floor: float, seed: int, noise: float = 0.01) -> list[dict]:
    """8 budgets over 1e15..1e18, two models per budget (the better one is the law, the other 20% worse)."""
    rng = np.random.default_rng(seed)
    pts = []
    for c in np.logspace(15, 18, 8):
        true = A * c**-beta + floor
        for model, factor in ((f"{name}-B", 1.0), (f"{name}-S", 1.2)):
            pts.append(
                {
                    "model": model,
                    "params": 1e8 if factor == 1.0 else 3e7,
                    "budget_flops": c,
                    "flops": c,
                    "fid": true * factor * np.exp(rng.normal(0, noise)),
                }
            )
    return pts


def _crossing_arms(seed: int) -> dict[str, list[dict]]:
    # DiT steeper (0.5) but worse at small compute; U-Net (0.3) chosen so the two laws meet at C_CROSS.
    a_dit = 100.0 * 1e15**0.5
    a_unet = a_dit * C_CROSS ** (0.3 - 0.5)
    return {"dit": _arm("dit", a_dit, 0.5, 5.0, seed), "unet": _arm("unet", a_unet, 0.3, 5.0, seed + 1)}


def test_arms_that_cross_at_a_known_compute():
    res = compare_arms(_crossing_arms(seed=0), n_boot=100, seed=0)
    assert res["arms"]["dit"]["beta"] == pytest.approx(0.5, abs=0.05)
    assert res["arms"]["unet"]["beta"] == pytest.approx(0.3, abs=0.05)
    for arm, truth in (("dit", 0.5), ("unet", 0.3)):
        lo, hi = res["arms"][arm]["beta_ci"]
        assert lo <= truth <= hi
    x = res["crossing"]
    assert x["exists"] and x["within_range"]
    assert x["compute"] == pytest.approx(C_CROSS, rel=0.5)
    lo, hi = x["compute_ci"]
    assert lo <= C_CROSS <= hi
    assert x["leader_before"] == "unet" and x["leader_after"] == "dit"
    assert x["p_cross"] > 0.9
    assert "dit curve overtakes unet" in x["statement"]
    diff = x["exponent_difference"]
    assert diff["value"] == pytest.approx(0.2, abs=0.07) and diff["ci"][0] > 0


def test_arms_whose_laws_cross_twice_name_both_crossings():
    # "steep": beta 1.0 with a high floor (60); "shallow": beta 0.3, floor 5. shallow is lower at 1e15, steep
    # overtakes it before 1e16, and shallow is lower again at 1e18, where steep has saturated near its floor.
    truth = {"steep": (340.0 * 1e15, 1.0, 60.0), "shallow": (195.0 * 1e15**0.3, 0.3, 5.0)}
    from ditcore.scaling.arms import _crossings

    c1, c2 = _crossings(np.array(truth["shallow"]), np.array(truth["steep"]), 1e15, 1e18)
    arms = {name: _arm(name, *params, seed=i, noise=0.005) for i, (name, params) in enumerate(truth.items())}
    x = compare_arms(arms, n_boot=50, seed=0)["crossing"]
    assert x["exists"] and x["compute"] == pytest.approx(c1, rel=0.5)
    assert (x["leader_before"], x["leader_after"]) == ("shallow", "steep")
    (later,) = x["later_crossings"]
    assert later["compute"] == pytest.approx(c2, rel=0.5) and later["leader_after"] == "shallow"
    assert later["within_range"]
    assert "steep curve overtakes shallow" in x["statement"]
    assert f"shallow curve is lower again from C = {later['compute']:.3g} FLOPs" in x["statement"]


def test_arms_that_do_not_cross():
    # Same exponent, DiT's constant half of U-Net's: DiT is better everywhere.
    a = 100.0 * 1e15**0.4
    res = compare_arms({"dit": _arm("dit", a / 2, 0.4, 5.0, 3), "unet": _arm("unet", a, 0.4, 5.0, 4)}, n_boot=100)
    x = res["crossing"]
    assert not x["exists"] and x["compute"] is None
    assert x["leader_before"] == x["leader_after"] == "dit"
    assert x["p_cross"] < 0.05
    assert "do not cross" in x["statement"] and "dit has the lower fitted fid throughout" in x["statement"]
    assert x["later_crossings"] == []


def test_an_arm_that_cannot_be_fitted_is_reported_not_raised():
    arms = _crossing_arms(seed=1)
    arms["tiny"] = arms["dit"][:4]  # two budgets only
    res = compare_arms(arms, n_boot=20)
    assert "error" in res["arms"]["tiny"]
    assert res["crossing"] is not None and res["crossing"]["arms"] == ["dit", "unet"]
