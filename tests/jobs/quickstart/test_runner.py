"""The quickstart's stage runner: a stage that runs again makes the stages after it run again (they were reused on
its old result), and a stage interrupted part-way is not reused from its earlier marker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobs.quickstart.modes import make_mode
from jobs.quickstart.runner import Context, Stage, run_stages


def _stages(out, calls: list, fail_b: bool = False) -> list[Stage]:
    def run_a(ctx):
        calls.append("a")
        (out / "a.txt").write_text(str(len(calls)))
        return {"id": len(calls), "path": str(out / "a.txt")}

    def run_b(ctx):
        calls.append("b")
        if fail_b:
            raise RuntimeError("interrupted")
        return {"saw": ctx.results["a"]["id"]}

    return [
        Stage("a", "A", lambda ctx: {"k": 1}, run_a, outputs=lambda r: [r["path"]]),
        Stage("b", "B", lambda ctx: {"k": 2 if fail_b else 1}, run_b),
    ]


def _run(out, stages) -> Context:
    ctx = Context(out, make_mode(tiny=True), time.monotonic())
    run_stages(ctx, stages, force=False)
    return ctx


def test_a_stage_that_runs_again_reruns_the_stages_after_it(tmp_path):
    calls: list = []
    first = _run(tmp_path, _stages(tmp_path, calls))
    assert calls == ["a", "b"] and first.results["b"] == {"saw": 1}
    _run(tmp_path, _stages(tmp_path, calls))
    assert calls == ["a", "b"]  # everything reused
    (tmp_path / "a.txt").unlink()  # A's output is gone: A runs again with the same config, and makes a new result
    again = _run(tmp_path, _stages(tmp_path, calls))
    assert calls == ["a", "b", "a", "b"], calls  # B was reused on A's old result
    assert again.results["b"] == {"saw": 3}


def test_a_stage_interrupted_part_way_is_run_again_not_reused(tmp_path):
    calls: list = []
    _run(tmp_path, _stages(tmp_path, calls))
    with pytest.raises(RuntimeError, match="interrupted"):  # B with other settings dies part-way
        _run(tmp_path, _stages(tmp_path, calls, fail_b=True))
    _run(tmp_path, _stages(tmp_path, calls))  # back to the first settings: B's old marker described its state
    assert calls == ["a", "b", "b", "b"], calls


def test_real_data_records_its_classifier_as_the_feature_net(tmp_path):
    """report.json's stable `encoders.feature_net.{source,sha256}` was missing for --data runs (no features stage):
    their sweep's FIDs are measured with the classifier trained on the labels."""
    import hashlib

    from jobs.quickstart.report import _encoders

    clf = tmp_path / "classifier"
    clf.mkdir()
    (clf / "model.safetensors").write_bytes(b"weights")
    ctx = Context(tmp_path, make_mode(tiny=True), time.monotonic())
    ctx.results["vae"] = {"source": "trained", "sha256": "v", "path": "x"}
    ctx.results["classifier"] = {"path": str(clf), "test_accuracy": 0.9}
    enc = _encoders(ctx)
    assert enc["feature_net"]["source"] == "trained"
    assert enc["feature_net"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert enc["vae"]["shipped_sha256"] is None and "path" not in enc["vae"], enc["vae"]  # derived, not echoed


def test_the_served_champions_fid_is_labelled_with_its_network_and_samples():
    """report.md's served section and the console called the sweep's FID "FID" where, with real data, the headline
    FID is the standard Inception one: it names the sweep, its network and its sample count."""
    from jobs.quickstart.report import sweep_fid_words

    promo = {"fid": 123.347, "point": {"fid_network": "outputs/quickstart/features", "fid_samples": 320}}
    assert sweep_fid_words(promo) == "sweep FID 123 (network outputs/quickstart/features, 320 samples)"
    assert sweep_fid_words({"fid": 5.0}) == "sweep FID 5"


def test_report_json_gives_the_free_floor_fit_only_when_the_floor_sits_at_its_bound():
    """`law.floor_at_bound` and `law.free_floor` of report.json, from a fit whose floor the lowest (12% low) point
    holds at its bound, and from a clean law whose floor is free."""
    import numpy as np

    from ditcore.scaling import fit_fid_law
    from jobs.quickstart.report import _floor_bound

    c = np.logspace(11.2, 12.7, 10)
    y = 3e20 * c**-1.6 + 140.0
    y[-1] *= 0.88
    law = fit_fid_law(c, y, n_boot=20).to_dict()
    out = _floor_bound(law)
    free = law["floor_bound"]["free"]
    assert out["floor_at_bound"] is True
    assert out["free_floor"]["beta"] == free["params"]["beta"] and out["free_floor"]["beta_ci"] == free["ci"]["beta"]
    assert out["free_floor"]["FID_inf"] == free["params"]["FID_inf"] > law["params"]["FID_inf"]  # above the bound
    assert out["free_floor"]["F"] == law["floor_bound"]["F"] and "heldout_error" in out["free_floor"]
    clean = _floor_bound(fit_fid_law(c, 3e20 * c**-1.6 + 140.0, n_boot=20).to_dict())
    assert clean == {"floor_at_bound": False}


def test_a_rerun_sets_the_last_record_aside_before_any_stage_runs(tmp_path):
    """A rerun that failed part-way left the last run's report.json in place, nothing marking it stale; the record
    stage's outputs now move to report.previous.* as soon as any stage runs again, and a full reuse keeps them."""
    calls: list = []

    def run_report(ctx):
        (tmp_path / "report.json").write_text(f'{{"saw": {ctx.results["a"]["id"]}}}')
        return {"json": str(tmp_path / "report.json")}

    def stages(fail_b=False):
        return [
            *_stages(tmp_path, calls, fail_b),
            Stage("r", "R", lambda ctx: {}, run_report, lambda r: [r["json"]], ("report.json",)),
        ]

    _run(tmp_path, stages())
    _run(tmp_path, stages())  # all reused: the record stays
    assert (tmp_path / "report.json").read_text() == '{"saw": 1}' and not (tmp_path / "report.previous.json").exists()
    with pytest.raises(RuntimeError, match="interrupted"):
        _run(tmp_path, stages(fail_b=True))
    assert not (tmp_path / "report.json").exists()  # no record that looks like this run's
    assert (tmp_path / "report.previous.json").read_text() == '{"saw": 1}'
    _run(tmp_path, stages())
    assert (tmp_path / "report.json").read_text() == '{"saw": 1}' and calls == ["a", "b", "b", "b"]
    # By name, not by the marker: a record whose marker is gone (the MLflow logging after it failed) goes aside too.
    (tmp_path / "stages" / "r.json").unlink()
    with pytest.raises(RuntimeError, match="interrupted"):
        _run(tmp_path, stages(fail_b=True))
    assert not (tmp_path / "report.json").exists()


def test_the_set_aside_report_keeps_its_own_images(tmp_path):
    """report.previous.md linked the plots and grids by path, which the rerun rewrites in place: it showed the new
    run's pictures beside the old run's numbers. Its images are now copied beside it and its links point there."""
    plots = tmp_path / "fit"
    plots.mkdir()

    def run_report(ctx):
        n = ctx.results["a"]["id"]
        (plots / "law.png").write_bytes(b"plot of run %d" % n)
        (tmp_path / "report.md").write_text(
            f"# run {n}\n![law](fit/law.png) and again ![law](fit/law.png), ![gone](fit/gone.png), "
            "![web](https://example.org/x.png)\n"
        )
        return {"md": str(tmp_path / "report.md")}

    def stages(k):
        a = Stage("a", "A", lambda ctx: {"k": k}, lambda ctx: {"id": k})
        return [a, Stage("r", "R", lambda ctx: {}, run_report, lambda r: [r["md"]], ("report.md",))]

    _run(tmp_path, stages(1))
    _run(tmp_path, stages(2))  # A runs again: the report of run 1 goes aside, then run 2 rewrites fit/law.png
    assert (plots / "law.png").read_bytes() == b"plot of run 2"
    old = (tmp_path / "report.previous.md").read_text()
    assert old.startswith("# run 1") and "fit/law.png" not in old
    kept = sorted((tmp_path / "report.previous_files").iterdir())
    assert [p.name for p in kept] == ["00-law.png"] and kept[0].read_bytes() == b"plot of run 1"
    assert old.count("](report.previous_files/00-law.png)") == 2  # one copy for both links
    assert "![gone](fit/gone.png)" in old and "![web](https://example.org/x.png)" in old  # left as they were
    _run(tmp_path, stages(3))  # the next rerun replaces the kept images with run 2's
    assert [p.read_bytes() for p in (tmp_path / "report.previous_files").iterdir()] == [b"plot of run 2"]


def test_keeping_a_reports_images_takes_odd_links_and_bytes(tmp_path):
    """A file where the folder goes, a report that is not UTF-8, titles and <bracketed> paths with spaces: the rerun
    crashed (FileExistsError, UnicodeDecodeError) after setting the report aside, or left links to the live files."""
    from jobs.quickstart.runner import keep_linked_images

    (tmp_path / "my plots").mkdir()
    (tmp_path / "my plots" / "a (1).png").write_bytes(b"A")
    (tmp_path / "b.png").write_bytes(b"B")
    md = tmp_path / "report.previous.md"
    md.write_bytes(b'caf\xe9 \xff\n![a](<my plots/a (1).png>) ![b](b.png "the title") ![b again](b.png)\n')
    (tmp_path / "kept").write_text("a file in the way")
    assert keep_linked_images(md, tmp_path / "kept") == 2
    out = md.read_bytes()
    assert out.startswith(b"caf\xe9 \xff\n")  # the bytes it had, untouched
    assert b"![a](<kept/00-a (1).png>)" in out and b'![b](kept/01-b.png "the title")' in out
    assert b"![b again](kept/01-b.png)" in out
    assert (tmp_path / "kept" / "00-a (1).png").read_bytes() == b"A"


def _record(**over):
    rec = {
        "goodput": 0.6,
        "champion": {"model": "big", "params": 4e5, "attr_accuracy": 0.9},
        "frontier_fid_first": 800.0,
        "frontier_fid_last": 120.0,
        "law": {"beta": 1.0, "beta_ci": [0.8, 1.25], "floor_at_bound": False},
        "heldout_error": 0.05,
        "stage_seconds": {"sweep": 700.0, "fit": 10.0},
    }
    return {**rec, **over}


def test_goals_give_each_verdict_and_never_count_a_missing_value_as_met():
    from jobs.quickstart.report import goals

    fit = {"models": {"small": 1e5, "big": 4e5}, "isoflop": {"fid": {"budgets": []}}}
    g = goals(_record(), fit)
    assert {k: v["met"] for k, v in g.items()} == {
        "goodput": True,
        "attr_accuracy": True,
        "frontier_drop": True,  # 120 / 800 = 0.15
        "beta_ci": True,  # 0.25 above beta: the farther end
        "heldout_error": True,
        "champion": True,  # not the smallest
        "wall": None,  # 710 s of stages: the install is outside the run
    }
    assert g["beta_ci"]["value"] == pytest.approx(0.25) and g["frontier_drop"]["value"] == pytest.approx(0.15)
    g = goals(
        _record(
            goodput=None,
            champion={"model": "small", "params": 1e5, "attr_accuracy": float("nan")},
            law={"beta": 1.0, "beta_ci": [0.6, 1.35], "floor_at_bound": True, "free_floor": {"heldout_error": 0.2}},
            heldout_error=0.11,
            stage_seconds={"sweep": 950.0},
        ),
        {"models": {"small": 1e5, "big": 4e5}, "isoflop": {"fid": {"budgets": []}}},
    )
    assert g["goodput"] == {"value": None, "threshold": 0.5, "met": None, "note": "not measured in this run"}
    assert g["attr_accuracy"]["met"] is None  # NaN is not measured, never met
    assert g["beta_ci"]["met"] is False and "conditional on FID_inf at its bound" in g["beta_ci"]["note"]
    assert g["heldout_error"]["met"] is False and g["heldout_error"]["note"].endswith("with the floor free: 20.0%")
    assert g["champion"]["met"] is None  # the smallest, with no isoFLOP data to say where the optimum lies
    assert g["wall"]["met"] is False  # the stages alone took longer than the goal
    # The smallest size that the isoFLOP minimum at the largest budget also picks meets the rule.
    iso = {"budgets": [{"budget_flops": c, "params": [1e5, 4e5], "n_opt": 1e5, "interior": False} for c in (1, 2)]}
    g = goals(
        _record(champion={"model": "small", "params": 1e5}), {"models": {"a": 1e5, "b": 4e5}, "isoflop": {"fid": iso}}
    )
    assert g["champion"]["met"] is True
    iso["budgets"][-1] = {"budget_flops": 2, "params": [1e5, 4e5], "n_opt": 4e5, "interior": False}  # largest best
    g = goals(
        _record(champion={"model": "small", "params": 1e5}), {"models": {"a": 1e5, "b": 4e5}, "isoflop": {"fid": iso}}
    )
    assert g["champion"]["met"] is False


def test_a_law_that_was_not_fitted_keeps_its_stable_keys_as_null():
    from jobs.quickstart.report import _law_record

    rec = _law_record({"fid_law": {"error": "too few budgets"}, "frontier": []})
    assert rec["law"]["error"] == "too few budgets"
    assert all(rec["law"][k] is None for k in ("A", "beta", "FID_inf", "beta_ci", "ci"))
    # an interval end written as null (a NaN in the fit) is no interval, not a crash
    law = {"params": {"A": 1.0, "beta": None, "FID_inf": 2.0}, "ci": {"beta": [None, 1.0]}, "form": "f"}
    rec = _law_record({"fid_law": law, "frontier": []})
    assert rec["law"]["beta"] is None and rec["law"]["beta_ci"] is None


def test_the_headline_names_the_standard_network_and_the_floor_s_own_sample_count():
    # The floor line said "same N" when the test split held fewer images than the model was scored on (emoji:
    # 350 against 2048), and the network was given as a file path.
    from jobs.quickstart.report import _record_section

    champ = {"model": "m", "fid": 80.0, "fid_samples": 2048, "fid_network": "/x/inception.pt"}
    champ["fid_network_name"] = "FID Inception-v3 (pytorch-fid weights)"
    text = "\n".join(_record_section({"champion": champ, "fid_floor": 30.0, "fid_floor_samples": 350}))
    assert "2048 samples, network FID Inception-v3 (pytorch-fid weights)" in text
    assert "real test images, 350 of them, same network; N = 350: the test split is smaller" in text
    text = "\n".join(_record_section({"champion": champ, "fid_floor": 30.0, "fid_floor_samples": 2048}))
    assert "2048 of them, same network; the same N" in text


def test_the_standard_fid_states_its_bootstrap_resamples():
    """The real-data champion's FID and floor intervals came from 10 resamples (a 95% interval little more than
    their range), unsaid: 50 now, recorded as champion.fid_ci_resamples and written beside the interval."""
    from jobs.quickstart.modes import make_data_mode
    from jobs.quickstart.report import _record_section, _with_real_data

    assert make_data_mode("fashion-mnist").standard_fid["n_boot"] == 50
    ctx = Context(Path("/tmp"), make_data_mode("fashion-mnist"), time.monotonic())
    ctx.results["standard_fid"] = {
        "fid": 77.0, "fid_network": "inc", "network": "FID Inception-v3", "n_samples": 2048, "fid_se": 0.5,
        "fid_ci": [76.1, 78.0], "n_boot": 50, "reference_count": 2048,
        "floor": {"fid": 11.6, "fid_ci": [11.2, 11.9], "n_samples": 2048},
    }  # fmt: skip
    ctx.results["classifier"] = {"test_accuracy": 0.9}
    champion = {"model": "m", "fid": 30.0, "fid_network": "clf", "fid_samples": 256}
    rec = _with_real_data(ctx, {}, {"champion": champion})
    assert rec["champion"]["fid_ci_resamples"] == 50
    assert "FID 77 [76.1, 78] (95%, 50 half-samples)" in "\n".join(_record_section(rec))
