"""`ditscale fit` on an architecture-arms sweep: per-arm exponents with intervals (arms.<arm>.beta / beta_ci), one
plot with both frontiers, and the crossing compute or a sentence that the fitted curves do not cross."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.scaling.fit import fit_all
from jobs.scaling.plots import ARMS_PLOT, PLOTS, write_plots
from jobs.scaling.summary import format_laws

BUDGETS = [1e12 * 10 ** (k / 2) for k in range(5)]  # 2 decades


def _points(laws: dict[str, tuple[float, float, float]], seed: int = 0) -> list[dict]:
    """Two models per arm at every budget; the better one follows FID = A (C/1e12)^-beta + floor (1% noise)."""
    rng = np.random.default_rng(seed)
    pts = []
    for arm, (a, beta, floor) in laws.items():
        for model, worse, params in ((f"{arm}-small", 1.0, 1e5), (f"{arm}-big", 1.15, 4e5)):
            for b in BUDGETS:
                fid = (a * (b / 1e12) ** -beta + floor) * worse * (1 + 0.01 * rng.standard_normal())
                pts.append(
                    {
                        "model": model,
                        "params": params,
                        "budget_flops": b,
                        "flops": b,
                        "step": 10,
                        "arm": arm,
                        "fid": fid,
                        "val_loss": 0.5 + fid / 1000,
                    }
                )
    return pts


@pytest.mark.parametrize(
    "laws, crosses",
    [
        ({"dit": (100.0, 0.5, 5.0), "unet": (60.0, 0.2, 5.0)}, True),  # steeper DiT overtakes at C ~ 5.5e12
        ({"dit": (100.0, 0.5, 5.0), "unet": (150.0, 0.2, 5.0)}, False),  # DiT lower everywhere
    ],
)
def test_two_arm_fit_reports_exponents_plot_and_crossing(tmp_path, laws, crosses):
    report, objs = fit_all(_points(laws), n_boot=60)
    for arm, (_, beta, _) in laws.items():
        a = report["arms"][arm]
        assert a["beta"] == pytest.approx(beta, abs=0.1)
        lo, hi = a["beta_ci"]
        assert lo <= a["beta"] <= hi and hi - lo < 0.5
    assert abs(report["arms"]["dit"]["beta"] - report["arms"]["unet"]["beta"]) > 0.15
    x = report["arm_comparison"]["crossing"]
    assert x["exists"] is crosses
    # The pooled isoFLOP fit mixes both families' sizes: said, and each arm gets its own (2 sizes here: an error
    # naming what it needs, per arm).
    assert "isoflop_across_arms" in [d["code"] for d in report["diagnostics"]]
    assert set(report["isoflop_by_arm"]) == {"dit", "unet"}
    files = write_plots(report, objs, tmp_path)
    assert (tmp_path / ARMS_PLOT) in files and (tmp_path / ARMS_PLOT).read_bytes()[:4] == b"\x89PNG"
    assert all((tmp_path / p).is_file() for p in PLOTS)
    text = format_laws(report)
    assert "arm dit" not in text and "  dit: beta = " in text and "  unet: beta = " in text
    if crosses:
        c_true = 1e12 * 0.6 ** (-1 / 0.3)
        assert x["compute"] == pytest.approx(c_true, rel=0.5) and x["within_range"]
        assert x["leader_before"] == "unet" and x["leader_after"] == "dit"
        assert f"The fitted dit curve overtakes unet at C = {x['compute']:.3g} FLOPs" in text
    else:
        assert x["compute"] is None and "do not cross" in text and "dit has the lower fitted fid throughout" in text


def test_single_arm_sweep_has_no_arms_section(tmp_path):
    pts = [p for p in _points({"dit": (100.0, 0.5, 5.0)}) if p["arm"] == "dit"]
    report, objs = fit_all(pts, n_boot=20)
    assert "arms" not in report and "arm_comparison" not in report and "isoflop_by_arm" not in report
    assert (tmp_path / ARMS_PLOT) not in write_plots(report, objs, tmp_path)
    assert "Architecture arms" not in format_laws(report)


def test_arm_without_enough_budgets_is_named(tmp_path):
    pts = _points({"dit": (100.0, 0.5, 5.0), "unet": (60.0, 0.2, 5.0)})
    pts = [p for p in pts if p["arm"] == "dit" or p["budget_flops"] <= BUDGETS[1]]  # unet: 2 budgets only
    report, objs = fit_all(pts, n_boot=20)
    assert "error" in report["arms"]["unet"] and "unet" in report["arms"]["unet"]["error"]
    assert report["arms"]["dit"]["beta"] == pytest.approx(0.5, abs=0.1)
    assert "  unet: not fitted (arm unet:" in format_laws(report)
    assert (tmp_path / ARMS_PLOT) in write_plots(report, objs, tmp_path)


@pytest.mark.parametrize("name", ["dit-vs-unet", "dit-vs-unet-fmnist"])
def test_example_arms_configs_expand_to_two_arms(name):
    from jobs.sweep.driver import load_sweep_config
    from jobs.sweep.grid import expand_grid
    from tests.conftest import REPO_ROOT

    cfg = load_sweep_config(str(REPO_ROOT / "configs" / "sweep" / f"{name}.yaml"))
    trials = expand_grid(cfg)
    arms = {t.arm for t in trials}
    n_models = sum(len(models) for models in cfg.arms.values())
    assert len(arms) == 2 and all(len(models) >= 3 for models in cfg.arms.values()) and len(cfg.budgets) >= 4
    assert len(trials) == n_models  # wsd: one trial per model, every budget a branch of it
    assert max(cfg.budgets) / min(cfg.budgets) >= 10  # >= 1 decade of compute
    assert {t.train.model.preset.split("-")[0] for t in trials} in ({"MMDiT", "UNet"}, {"DiT", "UNet"})
    assert len({t.name for t in trials}) == n_models  # every size has its own name in the points


def test_each_arms_isoflop_fit_says_how_many_minima_are_bracketed():
    """docs/fit.md promised isoflop_by_arm.<arm>.n_opt_interior; the key was copied from a fit that never had it,
    so an arm's N*(C) gave no hint whether its optima were estimates or bounds at the grid's edge."""
    rng = np.random.default_rng(0)
    budgets = [1e12 * 10 ** (k / 4) for k in range(6)]
    pts = []
    for arm, sizes in (("dit", (1e5, 3e5, 1e6, 3e6)), ("unet", (1e6, 3e6, 1e7, 3e7))):  # unet: best at its smallest
        for i, n in enumerate(sizes):
            for b in budgets:
                n_opt = 3e5 * (b / 1e12) ** 0.5
                fid = (100 * (b / 1e12) ** -0.5 + 5) * (1 + 0.3 * np.log(n / n_opt) ** 2)
                fid *= 1 + 0.01 * rng.standard_normal()
                pts.append(
                    {"model": f"{arm}-{i}", "params": n, "budget_flops": b, "flops": b, "step": 1, "arm": arm}
                    | {"fid": fid, "val_loss": 0.5 + fid / 1000}
                )
    report, _ = fit_all(pts, n_boot=20)
    by_arm = report["isoflop_by_arm"]
    assert by_arm["dit"]["n_opt_interior"][1] == by_arm["unet"]["n_opt_interior"][1] == 6
    assert by_arm["dit"]["n_opt_interior"][0] >= 4  # N* 3e5..1.8e6 inside 1e5..3e6: bracketed at most budgets
    assert by_arm["unet"]["n_opt_interior"][0] <= 1  # the smallest unet size is the best nearly everywhere: bounds
