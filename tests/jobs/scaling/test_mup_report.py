"""muP transfer analysis (`ditscale mup-report`): the best learning rate per width with and without muP, whether it
stays within one grid step, and the loss-vs-lr plot, on synthetic learning-rate x width points."""

from __future__ import annotations

import json
import math

import pytest

from ditcore.scaling import FitError
from jobs.cli.mup_report import main
from jobs.scaling.mup import PLOT_NAME, REPORT_NAME, mup_transfer_report, write_mup_report

LRS = [3.0e-4, 7.5e-4, 1.9e-3, 4.7e-3, 1.2e-2]
WIDTHS = [64, 128, 256]
POINT_KEYS = {"budget_flops": 1e12, "flops": 1e12, "checkpoint": "s3://b/ck"}  # what a sweep's points.json holds


def _loss(lr: float, best: float) -> float:
    return 1.0 + 0.05 * math.log(lr / best) ** 2


def _points() -> list[dict]:
    """muP: optimum 1.9e-3 at every width; standard: optimum 4.7e-3 / 2.5 per width doubling (one step each)."""
    pts = []
    for mup in (False, True):
        for i, w in enumerate(WIDTHS):
            best = 1.9e-3 if mup else 4.7e-3 / 2.5**i
            for lr in LRS:
                hp = {"optim.lr": lr, "optim.mup": mup}
                loss = _loss(lr, best)
                if not mup and w == 256 and lr == LRS[-1]:
                    loss = float("nan")  # a diverged run
                pts.append({"model": f"MMDiT-d2-w{w}", "params": w * w, "step": 80, "val_loss": loss, "hparams": hp})
                # an earlier point of the same run with a lower loss: only the final (most steps) point counts
                pts.append({"model": f"MMDiT-d2-w{w}", "params": w * w, "step": 40, "val_loss": 0.1, "hparams": hp})
    return pts


def test_optimal_lr_per_width_and_transfer_verdict(tmp_path):
    report, files = write_mup_report(_points(), tmp_path)
    assert report["widths"] == WIDTHS and report["lr_grid"] == LRS
    std, mup = report["standard"], report["mup"]
    assert std["optimal_lr"] == {"64": 4.7e-3, "128": 1.9e-3, "256": 7.5e-4}
    assert mup["optimal_lr"] == {"64": 1.9e-3, "128": 1.9e-3, "256": 1.9e-3}
    assert std["max_shift_steps"] == 2 and std["within_one_step"] is False
    assert mup["max_shift_steps"] == 0 and mup["within_one_step"] is True
    # the sub-grid optimum of a parabola in log lr is exact here: drift -log2(2.5) per doubling vs none
    assert std["drift_per_doubling"] == pytest.approx(-math.log2(2.5), abs=0.02)
    assert mup["drift_per_doubling"] == pytest.approx(0.0, abs=0.02)
    assert std["loss"]["256"]["0.012"] is None  # the diverged run
    assert "moves 2 grid steps" in report["statements"][0] and "stays within one grid step" in report["statements"][1]
    assert files == [tmp_path / REPORT_NAME, tmp_path / PLOT_NAME]
    assert json.loads((tmp_path / REPORT_NAME).read_text())["mup"]["optimal_lr"]["256"] == 1.9e-3
    assert (tmp_path / PLOT_NAME).read_bytes()[:4] == b"\x89PNG"


def test_optimum_at_grid_edge_is_flagged():
    pts = [p for p in _points() if p["hparams"]["optim.lr"] <= 1.9e-3]  # standard w64 best (4.7e-3) now off-grid
    rep = mup_transfer_report(pts)
    assert rep["standard"]["optimal_lr"]["64"] == 1.9e-3 and 64 in rep["standard"]["optimum_at_grid_edge"]
    assert "the lowest or highest rate that width ran" in rep["statements"][0]
    # A width that never ran the higher rates and did best at the highest it ran is at the edge of its own runs,
    # though not of the whole grid: its optimum may lie above, and "within one step" then claims too much.
    pts = [p for p in _points() if not (p["model"].endswith("w128") and p["hparams"]["optim.lr"] > 1.9e-3)]
    rep = mup_transfer_report(pts)
    assert rep["mup"]["optimal_lr"]["128"] == 1.9e-3 and rep["mup"]["optimum_at_grid_edge"] == [128]
    assert "at widths [128] the optimum is the lowest or highest rate that width ran" in rep["statements"][1]


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda ps: [{**p, "hparams": {"optim.mup": False}} for p in ps], "optim.lr"),
        (lambda ps: [{**p, "model": "MMDiT-d2"} for p in ps], "no width"),
        (lambda ps: [p for p in ps if p["model"].endswith("w64")], "need >= 2 widths"),
        (lambda ps: [], "no points"),
        (lambda ps: [*ps, 7], r"point \d+: not an object \(int 7\)"),
        (lambda ps: [{**ps[0], "hparams": "lr=1"}, *ps], "point 0: 'hparams' must be an object"),
        (
            lambda ps: [{**ps[0], "hparams": {"optim.lr": "abc"}}, *ps],
            r"point 0 .*positive hparams\['optim.lr'\], got 'abc'",
        ),
        (
            lambda ps: [{**ps[0], "hparams": {"optim.lr": 1e-3, "optim.mup": "no"}}, *ps],
            "must be true or false, got 'no'",
        ),
        # an infinite lr was written into mup_report.json as Infinity (not JSON); a width of 0 crashed LAPACK
        (lambda ps: [{**ps[0], "hparams": {"optim.lr": float("inf")}}, *ps], r"finite positive .*got inf"),
        (lambda ps: [{**ps[0], "width": 0}, *ps], "width 0 is not a size >= 1"),
        (  # (a width whose every run diverged is named and left out: test_a_divergence_after_...)
            lambda ps: [{**p, "val_loss": None} for p in ps],
            r"every run diverged at every width \[64, 128, 256\]",
        ),
        (  # two models of one width at one lr: the later step used to replace the other silently
            lambda ps: [*ps, {**ps[0], "model": "MMDiT-d3-w64", "val_loss": 0.5}],
            r"model 'MMDiT-d3-w64' \(trial None\) and model 'MMDiT-d2-w64' \(trial None\) both give the standard "
            r"setting at width 64 and lr 0.0003",
        ),
        (  # one model, two trials (another hyper-parameter differs)
            lambda ps: [*ps, {**ps[0], "trial_id": "other", "step": 10}],
            r"\(trial other\) and model 'MMDiT-d2-w64' \(trial None\) both give",
        ),
    ],
)
def test_bad_points_are_named(mutate, needle, tmp_path):
    with pytest.raises(FitError, match=needle):
        write_mup_report(mutate(_points()), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written half


def test_string_mup_flags_read_as_written():
    # bool("false") is True: "false" points used to be counted as muP runs
    as_text = [
        {**p, "hparams": {**p["hparams"], "optim.mup": str(p["hparams"]["optim.mup"]).lower()}} for p in _points()
    ]
    assert mup_transfer_report(as_text)["standard"] == mup_transfer_report(_points())["standard"]


def test_cli_reads_a_points_file(tmp_path, capsys):
    src = tmp_path / "points.json"
    src.write_text(json.dumps(_points()))
    assert main(["--points", str(src), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert 'mup.optimal_lr = {"64": 0.0019, "128": 0.0019, "256": 0.0019}' in out
    assert (tmp_path / "rep" / REPORT_NAME).is_file() and (tmp_path / "rep" / PLOT_NAME).is_file()
    assert main(["--points", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["--points", str(src), "--out", str(tmp_path / "afile")]) == 2  # was a FileExistsError traceback
    assert "afile: File exists" in capsys.readouterr().err


def test_missing_runs_and_single_width_are_stated():
    pts = [p for p in _points() if not (p["model"].endswith("w64") and p["hparams"]["optim.lr"] == 3.0e-4)]
    pts = [p for p in pts if p["hparams"]["optim.mup"] or p["model"].endswith("w128")]  # standard: one width
    rep = mup_transfer_report(pts)
    assert (
        rep["mup"]["missing_lrs"] == {"64": [3.0e-4]}
        and "runs missing (width: lrs) 64: [0.0003]" in rep["statements"][1]
    )
    assert rep["standard"]["within_one_step"] is None and "cannot be compared" in rep["statements"][0]


def test_a_run_that_ended_before_its_width_s_longest_is_left_out_and_named():
    # A run whose longer run FAILED gave its short run's loss as the "final" one, beside the others' losses at their
    # last step, and moved the optimum without a word.
    pts = [p for p in _points() if p["step"] == 80]
    for p in pts:
        if p["model"] == "MMDiT-d2-w128" and p["hparams"]["optim.mup"] and p["hparams"]["optim.lr"] != 1.2e-2:
            p["step"] = 320  # every run at width 128 went on to step 320 but lr 1.2e-2's
    report = mup_transfer_report(pts)
    assert report["stopped_early"] == {"mup": {"128": [1.2e-2]}}
    assert report["mup"]["missing_lrs"] == {"128": [1.2e-2]}
    assert any("ended before their width's longest run" in s and "128: ['0.012']" in s for s in report["statements"])


def test_failed_runs_are_named_and_a_divergence_counts_as_worse():
    """A run the pipeline stopped for divergence ends FAILED with no points: its lr showed as merely missing, and
    the optimum next to it as 'at the edge of the rates that width ran'. FAILED trials now come as entries with a
    `failed` reason: a divergence counts as worse than any finite loss, another failure is left out, both named."""
    pts = [p for p in _points() if p["step"] == 80]
    top = [
        p for p in pts if p["model"].endswith("w64") and p["hparams"]["optim.mup"] and p["hparams"]["optim.lr"] > 2e-3
    ]
    assert [p["hparams"]["optim.lr"] for p in top] == [4.7e-3, 1.2e-2]
    pts = [p for p in pts if p not in top]
    pts += [
        {**top[0], "failed": "MMDiT-d2-w64: non-finite loss (nan) in the steps up to 40"},
        {**top[1], "failed": "MMDiT-d2-w64: worker died (OOM)"},
    ]
    before = mup_transfer_report([p for p in pts if "failed" not in p])
    assert 64 in before["mup"]["optimum_at_grid_edge"] and before["mup"]["missing_lrs"] == {"64": [4.7e-3, 1.2e-2]}
    rep = mup_transfer_report(pts)
    m = rep["mup"]
    assert m["optimal_lr"]["64"] == 1.9e-3 and 64 not in m["optimum_at_grid_edge"]  # bounded by the diverged rate
    assert m["loss"]["64"]["0.0047"] is None and m["missing_lrs"] == {"64": [1.2e-2]}
    assert rep["failed_runs"] == {
        "mup": {
            "64": [
                {"lr": 4.7e-3, "reason": "MMDiT-d2-w64: non-finite loss (nan) in the steps up to 40", "diverged": True},
                {"lr": 1.2e-2, "reason": "MMDiT-d2-w64: worker died (OOM)", "diverged": False},
            ]
        }
    }
    (said,) = [s for s in rep["statements"] if "FAILED" in s]
    assert "64: 0.0047 diverged, counted as worse" in said and "64: 0.012 left out (MMDiT-d2-w64: worker died" in said
    # A FAILED run of another model at a rate a point gives was kept silently: refused, as two points are.
    with pytest.raises(FitError, match=r"a FAILED run of model 'MMDiT-d3-w64' \(trial None\) and model 'MMDiT-d2-w64'"):
        mup_transfer_report([*pts, {**pts[0], "model": "MMDiT-d3-w64", "failed": "worker died"}])
    # A trial that failed in part (a branch) beside a finished run of the same rate: the finished run's loss counts.
    partial = mup_transfer_report(pts + [{**top[0], "val_loss": 1.2}])
    assert partial["mup"]["loss"]["64"]["0.0047"] == 1.2
    assert [e["lr"] for e in partial["failed_runs"]["mup"]["64"]] == [1.2e-2]


def test_the_cli_reads_failed_trials_from_the_sweep_record(tmp_path, capsys):
    """`--experiment` reads the sweep's FAILED trial runs (as the sweep records them: params model / hparams, the
    ditscale status and failure-reason tags) beside its points; trials of an earlier grid stay out."""
    from mlflow import MlflowClient

    from pipelines.infra import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = tracking.ensure_experiment(client, "mup")
    parent = client.create_run(exp, tags={tracking.ROLE_TAG: tracking.ROLE_SWEEP}).info.run_id
    pts = [p for p in _points() if p["step"] == 80 and p["hparams"]["optim.mup"]]
    trials = []
    for i, p in enumerate(pts):
        tid = f"t{i}"
        tags = {tracking.ROLE_TAG: tracking.ROLE_TRIAL, tracking.TRIAL_ID_TAG: tid, tracking.PARENT_TAG: parent}
        run = client.create_run(exp, tags=tags).info.run_id
        diverges = p["model"].endswith("w256") and p["hparams"]["optim.lr"] == 1.2e-2
        # The diverged trial was first run by a grid without the lr axis: its params keep that grid's hparams (no
        # lr); the tags the sweep sets at every invocation hold this grid's.
        first = {"optim.mup": True} if diverges else p["hparams"]
        tracking.log_params_once(client, run, {"model": p["model"], "hparams": json.dumps(first)})
        tracking.set_tags(
            client, run, {"ditscale.hparams": json.dumps(p["hparams"]), tracking.RUN_NAME_TAG: p["model"]}
        )
        points = [] if diverges else [{**p, "trial_id": tid, **POINT_KEYS}]
        client.log_text(run, json.dumps(points), tracking.POINTS_ARTIFACT)
        reason = "MMDiT-d2-w256-main: non-finite gradient norm (nan) at step 7 (loss 3.1): diverged"
        tracking.end_run(client, run, "failed" if diverges else "finished", reason if diverges else None)
        trials.append(tid)
    old = client.create_run(exp, tags={tracking.ROLE_TAG: tracking.ROLE_TRIAL, tracking.TRIAL_ID_TAG: "old"})
    client.set_tag(old.info.run_id, tracking.PARENT_TAG, parent)
    tracking.log_params_once(client, old.info.run_id, {"model": "MMDiT-d2-w64", "hparams": '{"optim.lr": 9.9}'})
    tracking.end_run(client, old.info.run_id, "failed", "an earlier grid's trial")
    client.log_text(parent, json.dumps({"trial_ids": trials}), tracking.GRID_ARTIFACT)

    assert [f["trial_id"] for f in tracking.failed_trials(client, parent)] == [f"t{len(trials) - 1}"]
    out = tmp_path / "rep"
    assert main(["--experiment", "mup", "--tracking-uri", uri, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "mup: FAILED runs (width: lr): 256: 0.012 diverged, counted as worse than any finite loss" in said
    rep = json.loads((out / REPORT_NAME).read_text())
    assert rep["mup"]["loss"]["256"]["0.012"] is None and rep["mup"]["missing_lrs"] == {}
    assert 9.9 not in rep["lr_grid"]


def test_a_divergence_after_a_shorter_run_finished_counts_as_worse_and_a_width_that_only_diverged_is_named():
    """A trial whose longest run diverged after a shorter run of it finished has points (the shorter run's): its lr
    was 'stopped early' and missing, not worse. And a width whose every run diverged stopped the whole report."""
    pts = [p for p in _points() if p["step"] == 80 and p["hparams"]["optim.mup"]]
    for p in pts:
        p["step"] = 320  # every run reached step 320
    top = next(p for p in pts if p["model"].endswith("w64") and p["hparams"]["optim.lr"] == 4.7e-3)
    top["step"] = 160  # but lr 4.7e-3's: its run to 320 diverged after the run to 160 finished
    failed = {**top, "failed": "MMDiT-d2-w64-main: non-finite loss (nan) in the steps up to 200"}
    rep = mup_transfer_report([*pts, failed])
    assert "stopped_early" not in rep and rep["mup"]["loss"]["64"]["0.0047"] is None
    assert [e["lr"] for e in rep["failed_runs"]["mup"]["64"]] == [4.7e-3] and rep["mup"]["optimal_lr"]["64"] == 1.9e-3
    # A longest run that finished keeps its loss though a shorter run (a branch) of its trial diverged.
    fine = mup_transfer_report([*pts, {**top, "step": 320}, failed])
    assert fine["mup"]["loss"]["64"]["0.0047"] == pytest.approx(_loss(4.7e-3, 1.9e-3)) and "failed_runs" not in fine
    # Every run of width 256 diverged: named, and the other widths are still compared.
    lost = [
        {**p, "failed": "non-finite loss (nan) in the steps up to 9"} if p["model"].endswith("w256") else p
        for p in pts
        if p is not top
    ]
    rep = mup_transfer_report(lost)
    assert rep["mup"]["every_run_diverged"] == [256] and set(rep["mup"]["optimal_lr"]) == {"64", "128"}
    assert "at widths [256] every run diverged (no optimum)" in rep["statements"][0]
