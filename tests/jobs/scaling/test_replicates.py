"""Pooling seed replicates of one grid (jobs.scaling.replicates)."""

from __future__ import annotations

import math

import pytest

from ditcore.scaling import FitError
from jobs.scaling.replicates import pool_replicates


def _pt(model: str, budget: float, fid: float, **kw) -> dict:
    return {
        "model": model,
        "params": 1000,
        "budget_flops": budget,
        "step": int(budget / 1e9),
        "fid": fid,
        "val_loss": fid / 1000,
        "fid_se": 2.0,
        "fid_samples": 320,
        "checkpoint": f"{model}-{budget}-{fid}",
        **kw,
    }


def test_points_in_every_sweep_are_averaged_the_rest_counted():
    a = [_pt("m", 1e11, 100.0), _pt("m", 2e11, 80.0), _pt("big", 1e11, 300.0)]
    b = [_pt("m", 1e11, 110.0), _pt("m", 2e11, 70.0)]  # "big" did not run in this replicate
    pooled, summary = pool_replicates([a, b], ["s0", "s1"])
    assert summary["points_pooled"] == 2 and summary["points_dropped"] == 1
    assert summary["dropped_examples"][0]["model"] == "big"
    by = {p["budget_flops"]: p for p in pooled}
    assert by[1e11]["fid"] == pytest.approx(105.0) and by[1e11]["val_loss"] == pytest.approx(0.105)
    assert by[1e11]["fid_replicates"] == [100.0, 110.0] and by[1e11]["replicates"] == 2
    assert by[1e11]["fid_se"] == pytest.approx(math.sqrt(50.0) / math.sqrt(2))  # sd across seeds > se 2
    assert by[1e11]["checkpoint"] == "m-100000000000.0-100.0"  # the better replicate's checkpoint
    assert by[2e11]["checkpoint"] == "m-200000000000.0-70.0"


def test_sampling_se_is_the_floor_when_the_seeds_agree():
    pooled, _ = pool_replicates([[_pt("m", 1e11, 100.0)], [_pt("m", 1e11, 100.5)]])
    assert pooled[0]["fid_se"] == pytest.approx(2.0 / math.sqrt(2))


def test_refusals_name_the_problem():
    with pytest.raises(FitError, match="at least 2 sweeps"):
        pool_replicates([[_pt("m", 1e11, 100.0)]])
    with pytest.raises(FitError, match="share no"):
        pool_replicates([[_pt("m", 1e11, 100.0)], [_pt("n", 1e11, 100.0)]])
    # The message says the key also names the fid_se method (a sweep evaluated before half-samples has another).
    with pytest.raises(FitError, match=r"differ in eval_key \(a, b\).*how fid_se is resampled"):
        pool_replicates([[_pt("m", 1e11, 100.0, eval_key="a")], [_pt("m", 1e11, 101.0, eval_key="b")]])
    with pytest.raises(FitError, match=r"differ in fid_samples \(320, 640\); only FIDs .* can be averaged$"):
        pool_replicates([[_pt("m", 1e11, 100.0, fid_samples=320)], [_pt("m", 1e11, 101.0, fid_samples=640)]])
    with pytest.raises(FitError, match="s1: two points"):
        pool_replicates([[_pt("m", 1e11, 100.0)], [_pt("m", 1e11, 100.0), _pt("m", 1e11, 90.0)]], ["s0", "s1"])


def test_a_replicates_nan_keeps_the_pooled_point_nan_for_the_diagnostic():
    """A NaN FID in one replicate made the pooled FID None: the point fell out of every fit with no
    non_finite_metric sentence. NaN keeps it named; a metric no replicate has stays None."""
    from ditcore.scaling.diagnostics import fit_diagnostics

    pooled, _ = pool_replicates([[_pt("m", 1e11, float("nan"))], [_pt("m", 1e11, 100.0)]])
    assert math.isnan(pooled[0]["fid"])
    assert "non_finite_metric" in [d["code"] for d in fit_diagnostics(points=pooled)]
    pooled, _ = pool_replicates([[_pt("m", 1e11, 90.0, val_loss=None)], [_pt("m", 1e11, 100.0, val_loss=None)]])
    assert pooled[0]["val_loss"] is None


def test_sweeps_that_are_not_seed_replicates_are_refused():
    # The same sweep logged twice (or a seed rerun, bit-identical) pooled as two seeds: sd 0, fid_se / sqrt(2).
    same = [_pt("m", 1e11, 100.0, trial_id="m-seed0")]
    with pytest.raises(FitError, match=r"s0 and s1 both hold trial 'm-seed0' .*the same training run, not a replicate"):
        pool_replicates([same, [_pt("m", 1e11, 100.0, trial_id="m-seed0", checkpoint="elsewhere")]], ["s0", "s1"])
    with pytest.raises(FitError, match=r"s0 and s1 both hold checkpoint 'm-100000000000.0-100.0'"):
        pool_replicates([[_pt("m", 1e11, 100.0)], [_pt("m", 1e11, 100.0)]], ["s0", "s1"])


def test_sweeps_trained_with_other_settings_are_refused_but_another_seed_or_place_is_not():
    """Pooling told sweeps of other hyper-parameters apart by nothing (a point's hparams hold only the keys its sweep
    listed): two sweeps at lr 4e-3 and 2e-3 averaged into one law. The runs' logged training configs now must agree
    but for the seed, where it ran and what is compared elsewhere (evaluation)."""
    from ditcore.config import to_dict
    from jobs.scaling.replicates import training_settings
    from jobs.train.config import TrainConfig

    base = to_dict(TrainConfig())
    seed1 = to_dict(TrainConfig())
    seed1["run"].update(seed=1, num_workers=2)
    seed1["data"]["manifest"] = "s3://elsewhere/manifest.json"
    seed1["eval"]["seed"] = 5
    lr = to_dict(TrainConfig())
    lr["optim"]["lr"] = 2e-3
    a, b = [_pt("m", 1e11, 100.0, run_id="ra")], [_pt("m", 1e11, 104.0, run_id="rb")]
    pooled, _ = pool_replicates(
        [a, b], ["s0", "s1"], [{"ra": training_settings(base)}, {"rb": training_settings(seed1)}]
    )
    assert pooled[0]["fid"] == pytest.approx(102.0)
    with pytest.raises(
        FitError,
        match=r"s0 and s1 trained model 'm' at budget 1e\+11 with other settings \(optim.lr: "
        r"0.001 vs 0.002\): not seed replicates",
    ):
        pool_replicates([a, b], ["s0", "s1"], [{"ra": training_settings(base)}, {"rb": training_settings(lr)}])
    # The logged run's own budget (a replicate of the first budgets only trains its main run less far) and a key
    # an older config lacks are not compared; the validation split is (it changes what training sees).
    short = to_dict(TrainConfig())
    short["budget_flops"] = 3.3e11
    del short["data"]["flip"]
    pooled, _ = pool_replicates(
        [a, b], ["s0", "s1"], [{"ra": training_settings(base)}, {"rb": training_settings(short)}]
    )
    assert pooled[0]["replicates"] == 2
    val = to_dict(TrainConfig())
    val["data"]["val_samples"] = 128
    with pytest.raises(FitError, match=r"data.val_samples: 64 vs 128"):
        pool_replicates([a, b], ["s0", "s1"], [{"ra": training_settings(base)}, {"rb": training_settings(val)}])
    # A run without a logged config (an older record) is not compared.
    pooled, _ = pool_replicates([a, b], ["s0", "s1"], [{"ra": training_settings(base)}, {}])
    assert pooled[0]["replicates"] == 2
