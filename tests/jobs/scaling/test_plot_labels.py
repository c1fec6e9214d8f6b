"""The FID plot states its sample count and feature network, and its title the law's exponent with its interval,
the held-out error and how many seed replicates each point averages."""

from __future__ import annotations

from jobs.scaling.plots import law_title, metric_label

_LAW = {
    "params": {"A": 6.4e17, "beta": 1.3443, "FID_inf": 121.3},
    "ci": {"A": [2.5e13, 3.3e22], "beta": [0.9573, 1.758], "FID_inf": [98.1, 121.3]},
    "ci_level": 0.95,
    "held_out": {"compute": 5e12, "observed": 121.3, "predicted": 133.8, "rel_error": 0.1031},
}


def _point(**kw) -> dict:
    return {"fid": 100.0, "fid_samples": 320, "fid_feature_dim": 288, "fid_network": "/x/quickstart/features/", **kw}


def test_fid_axis_names_the_shared_sample_count_and_network():
    assert metric_label([_point(), _point()], "fid") == "FID (320 samples; network: quickstart/features, 288-d)"
    # Points scored with different sample counts: the label does not claim one.
    assert metric_label([_point(), _point(fid_samples=640)], "fid") == "FID (network: quickstart/features, 288-d)"
    assert metric_label([{"fid": 1.0}], "fid") == "FID"
    assert metric_label([_point()], "clip_score") == "CLIP_SCORE"


def test_law_title_gives_interval_held_out_error_and_replicates():
    title = law_title(_LAW, "beta")
    assert title == "beta = 1.34 [0.957, 1.76] (95%), held-out error 10.3% at C = 5e+12"
    pooled = law_title(_LAW, "beta", {"n_sweeps": 3})
    assert pooled.startswith(title) and pooled.endswith("each point the mean of 3 sweeps (seed replicates)")
    assert law_title({**_LAW, "ci": {}}, "beta").startswith("beta = 1.34, held-out")  # no interval: none claimed
    assert law_title({"error": "too few points"}, "beta") is None and law_title(None, "beta") is None
    assert law_title(_LAW, "alpha") is None
