"""The FID plot states its sample count and feature network, and its title the law's exponent with its interval,
the held-out error and how many seed replicates each point averages; the isoFLOP plot's metric axis says the same,
and the N*(C) plot's title gives the exponent with its interval and how many minima are bounds."""

from __future__ import annotations

from jobs.scaling.plots import law_title, metric_axis, metric_label, n_opt_title

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
    bound = {
        "binds": True,
        "free": {"params": {"beta": 1.636}, "ci": {"beta": [1.105, 2.319]}, "held_out_rel_error": 0.238},
    }
    assert law_title({**_LAW, "floor_bound": bound}, "beta") == (
        title + "\nFID_inf at its bound (the lowest value); floor free: beta = 1.64 [1.1, 2.32], held-out error 23.8%"
    )
    assert law_title({**_LAW, "floor_bound": {**bound, "binds": False}}, "beta") == title
    assert law_title(_LAW, "alpha") is None


def _budget(n_opt: float, interior: bool) -> dict:
    return {"params": [2e4, 6e4, 2e5], "n_opt": n_opt, "interior": interior}


def test_isoflop_axis_and_n_opt_title_state_what_they_show():
    assert metric_axis([_point()], "fid") == metric_label([_point()], "fid")
    assert metric_axis([_point()], "val_loss") == "validation loss"
    iso = {
        "metric": "fid",
        "budgets": [_budget(5e4, True), _budget(2e4, False), _budget(1e5, True)],
        "n_opt_law": {
            "params": {"k": 239.3, "a": 0.2233},
            "ci": {"k": [0.1, 7e4], "a": [0.0074, 0.4897]},
            "ci_level": 0.95,
        },
    }
    assert n_opt_title(iso) == (
        "N*(C) = k * C^a from FID isoFLOP minima: a = 0.223 [0.0074, 0.49] (95%)\n2 of 3 minima interior"
    )
    loss = {**iso, "metric": "val_loss", "n_opt_law": {"error": "fewer than 2 budgets"}}
    assert n_opt_title(loss).startswith("N*(C) = k * C^a from validation-loss isoFLOP minima: no N*(C) fit\n")


def test_isoflop_plot_marks_edge_minima_apart_from_parabola_vertices(tmp_path, monkeypatch):
    # An edge "minimum" is the best measured size, not the drawn parabola's vertex: it was marked with the same x.
    from jobs.scaling import plots

    calls = []
    real = plots._pyplot

    def spy():
        plt = real()
        fig, ax = plt.subplots()
        ax_plot = ax.plot

        def plot(*a, **k):
            calls.append((a, k))
            return ax_plot(*a, **k)

        ax.plot = plot
        plt.subplots = lambda *a, **k: (fig, ax)
        return plt

    monkeypatch.setattr(plots, "_pyplot", spy)
    budget = {
        "params": [1e5, 1e6, 1e7],
        "fid": [100.0, 120.0, 150.0],
        "budget_flops": 1e12,
        "coef": [1.0, -30.0, 300.0],
    }
    iso = {
        "metric": "fid",
        "budgets": [
            {**budget, "fit_range": [11.5, 16.1], "n_opt": 1e5, "metric_opt": 100.0, "method": "edge"},
            {**budget, "fit_range": [11.5, 16.1], "n_opt": 3e6, "metric_opt": 90.0, "method": "parabola"},
        ],
    }
    plots.plot_isoflop(iso, tmp_path / "iso.png")
    markers = [a[2] for a, _ in calls if len(a) == 3 and isinstance(a[2], str) and a[2].startswith("k")]
    assert markers == ["k^", "kx"]
