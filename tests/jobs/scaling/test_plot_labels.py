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
        monkeypatch.setattr(plt, "subplots", lambda *a, **k: (fig, ax))  # undone after the test
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


# One quickstart run's FID isoFLOP data (parabola coefficients in log N; the minimum is the vertex or, at the edge,
# the best measured size).
_QUICKSTART_ISO = [
    (1.5e11, [788.6, 855.3, 920.7, 2016.3], [237.687, -6090.884, 39702.123], None),
    (2.2e11, [479.3, 721.1, 737.6, 2353.3], [318.846, -8102.794, 51867.393], None),
    (3.3e11, [334.2, 669.0, 808.8, 1910.5], [183.928, -4510.192, 27990.218], None),
    (4.8e11, [211.9, 618.0, 755.4, 982.3], [-31.19, 1102.059, -8557.562], None),
    (7.1e11, [188.5, 409.8, 803.3, 747.6], [-52.208, 1622.751, -11826.777], None),
    (1.05e12, [182.2, 298.2, 564.2, 666.6], [3.797, 64.46, -1167.973], None),
    (1.55e12, [181.9, 180.7, 369.9, 755.7], [91.915, -2314.946, 14729.327], (294443, 153.5)),
    (2.3e12, [159.2, 152.5, 241.1, 637.6], [93.698, -2399.38, 15473.811], (363581, 113.3)),
    (3.4e12, [130.6, 148.6, 183.4, 392.4], [44.646, -1132.962, 7304.103], None),
    (5.0e12, [123.1, 125.2, 143.6, 219.3], [17.187, -437.307, 2898.107], None),
]


def test_isoflop_legend_covers_no_point(tmp_path, monkeypatch):
    # The smallest size's points climb the left edge, where the edge minima lie: the legend, inside the axes, covered
    # the smallest budget's.
    from jobs.scaling import plots

    figs = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), real_save(fig, path))[1])
    params = [180240.0, 687952.0, 1175312.0, 3869968.0]
    budgets = [
        {
            "params": params,
            "fid": fid,
            "budget_flops": c,
            "coef": coef,
            "fit_range": [12.1, 15.17],
            "n_opt": vertex[0] if vertex else params[0],
            "metric_opt": vertex[1] if vertex else fid[0],
            "method": "parabola" if vertex else "edge",
        }
        for c, fid, coef, vertex in _QUICKSTART_ISO
    ]
    plots.plot_isoflop({"metric": "fid", "budgets": budgets}, tmp_path / "iso.png", "FID")
    (fig,) = figs
    ax = fig.axes[0]
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent()
    points = [(n, y) for b in budgets for n, y in [*zip(b["params"], b["fid"]), (b["n_opt"], b["metric_opt"])]]
    assert [p for p in points if box.contains(*ax.transData.transform(p))] == []
