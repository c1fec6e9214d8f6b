"""The quickstart's stage runner: a stage that runs again makes the stages after it run again (they were reused on
its old result), and a stage interrupted part-way is not reused from its earlier marker."""

from __future__ import annotations

import time

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
