"""fit / report / promote against real MLflow records: a sqlite store, and a `mlflow server` on loopback (REST)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jobs.cli import fit as fit_cli
from jobs.cli import promote as promote_job
from jobs.cli import report as report_job
from jobs.scaling import fit as fit_job
from pipelines.infra.tracking import (
    PARENT_TAG,
    POINTS_ARTIFACT,
    ROLE_SWEEP,
    ROLE_TAG,
    ROLE_TRIAL,
    RegistryError,
    TrackingURIError,
    check_tracking_uri,
    ensure_experiment,
    resolve_champion,
    resolve_tracking_uri,
    sweep_points,
)
from pipelines.infra.tracking import (
    client as get_client,
)
from tests.conftest import free_port, loopback_mlflow_server

MODELS = {"DiT-T/2": 1.0e6, "DiT-S/2": 4.0e6, "DiT-B/2": 1.6e7}
BUDGETS = [1e14, 1e15, 1e16, 1e17]
N_BOOT = "25"


def _fid(n: float, c: float) -> float:
    """A synthetic, noise-free scaling surface: bigger models win at larger budgets."""
    d = c / (6 * n)
    return 3.0 + 4.0e2 * n**-0.3 + 3.0e3 * d**-0.3


def _loadable_checkpoint(path: Path) -> str:
    """A small checkpoint that loads (the sweep's names are labels here; the weights are DiT-T/2's)."""
    from ditcore.models import build_model
    from tests.jobs._train_helpers import save_model_checkpoint

    return save_model_checkpoint(path, build_model("DiT-T/2", num_classes=10, input_size=8), {"manifest": "unused"})


def _log_sweep(
    client, exp_name: str, ckpt_root: str | None, models=MODELS, budgets=BUDGETS, fid=_fid, extra=None, train=None
) -> tuple[str, dict]:
    """Parent run + one child run per model with points.json (one point per budget, `fid(n, c)`, plus the `extra`
    keys) and metrics, and config/train.json when `train` (a training config as a dict) is given, as a sweep's
    trial runs log them; (parent id, best point)."""
    exp_id = ensure_experiment(client, exp_name)
    parent = client.create_run(exp_id, run_name="sweep", tags={ROLE_TAG: ROLE_SWEEP})
    best = None
    for model, n in models.items():
        child = client.create_run(exp_id, run_name=model, tags={ROLE_TAG: ROLE_TRIAL, PARENT_TAG: parent.info.run_id})
        rid = child.info.run_id
        client.log_param(rid, "model", model)
        client.log_param(rid, "params", int(n))
        points = []
        for step, c in enumerate(budgets, start=1):
            if ckpt_root is None or ckpt_root.startswith("s3://"):
                ck = f"{ckpt_root or 's3://bucket/sweep'}/{model.replace('/', '_')}/step_{step:08d}"
            else:
                ck_dir = Path(ckpt_root) / model.replace("/", "_") / f"step_{step:08d}"
                ck = _loadable_checkpoint(ck_dir)  # promote loads the best one before registering it
            p = {
                "budget_flops": c,
                "flops": c * 1.01,
                "step": step * 100,
                "fid": fid(n, c),
                "val_loss": 0.3 + 2.0 * c**-0.1,
                "params": n,
                "model": model,
                "checkpoint": ck,
                **(extra or {}),
            }
            points.append(p)
            client.log_metric(rid, "fid", p["fid"], step=p["step"])
            if best is None or p["fid"] < best["fid"]:
                best = {**p, "run_id": rid}
        client.log_text(rid, json.dumps(points), POINTS_ARTIFACT)
        if train is not None:
            client.log_text(rid, json.dumps(train), "config/train.json")
        client.set_terminated(rid)
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id, best


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything defaulting to the cwd stays in tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_fit_report_promote_on_sqlite(tmp_path, sqlite_uri, capsys):
    client = get_client(sqlite_uri)
    parent_id, best = _log_sweep(client, "grid", str(tmp_path / "ckpt"))
    # artifacts land next to the database, not in the process cwd of whoever created the experiment
    assert client.get_experiment_by_name("grid").artifact_location.startswith((tmp_path / "mlruns").as_uri())

    _, points = sweep_points(client, experiment="grid")
    assert len(points) == len(MODELS) * len(BUDGETS) and all(p["run_id"] for p in points)

    out = tmp_path / "fit_out"
    rc = fit_cli.main(["--experiment", "grid", "--tracking-uri", sqlite_uri, "--out", str(out), "--n-boot", N_BOOT])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "FID frontier: A * C^-beta + FID_inf" in printed and "held-out" in printed
    report = json.loads((out / "fit_report.json").read_text())
    law = report["fid_law"]
    assert set(law["params"]) == {"A", "beta", "FID_inf"} and set(law["ci"]) == {"A", "beta", "FID_inf"}
    assert law["held_out"]["compute"] == pytest.approx(max(BUDGETS) * 1.01)
    assert report["isoflop"]["fid"]["n_opt_law"]["n_budgets"] == len(BUDGETS)
    assert set(report["per_model"]) == set(MODELS)
    for name in fit_job.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # logged to the parent run, and readable back through the client
    logged = {a.path for a in client.list_artifacts(parent_id, "fit")}
    assert {f"fit/{n}" for n in (*fit_job.PLOTS, "fit_report.json")} <= logged
    assert client.get_run(parent_id).data.metrics["fit.fid.beta"] == pytest.approx(law["params"]["beta"])

    rc = report_job.main(["--experiment", "grid", "--tracking-uri", sqlite_uri])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "beta = " in printed and "checkpoint" in printed.splitlines()[-len(points) - 2]
    assert sum(1 for line in printed.splitlines() if line.startswith("DiT-")) == len(points)

    rc = promote_job.main(["--experiment", "grid", "--tracking-uri", sqlite_uri, "--no-pyfunc"])
    assert rc == 0, capsys.readouterr()
    champ = resolve_champion("ditscale", tracking_uri=sqlite_uri)
    assert champ["checkpoint"] == best["checkpoint"] and champ["run_id"] == best["run_id"]
    assert champ["fid"] == pytest.approx(best["fid"]) and champ["train_flops"] == pytest.approx(best["flops"])
    assert champ["version"] == "1" and champ["experiment"] == "grid"
    mv = client.get_model_version_by_alias("ditscale", "champion")
    assert mv.source == best["checkpoint"] and mv.tags["checkpoint"] == best["checkpoint"]
    # promoting again reuses the version of the same checkpoint
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", sqlite_uri, "--no-pyfunc"]) == 0
    assert "reused ditscale version 1" in capsys.readouterr().out
    assert len(client.search_model_versions("name='ditscale'")) == 1
    # A reused bare version gets the promotion's tags again (it kept stale ones, which resolve_champion returned).
    client.set_model_version_tag("ditscale", "1", "fid", "999")
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", sqlite_uri, "--no-pyfunc"]) == 0
    assert "moved from" not in capsys.readouterr().out  # the alias stays where it was
    assert resolve_champion("ditscale", tracking_uri=sqlite_uri)["fid"] == pytest.approx(best["fid"])
    # Another sweep's champion takes the shared alias: the promotion names the version it replaced.
    _, best2 = _log_sweep(client, "grid2", str(tmp_path / "ckpt2"))
    assert promote_job.main(["--experiment", "grid2", "--tracking-uri", sqlite_uri, "--no-pyfunc"]) == 0
    out = capsys.readouterr().out
    assert f"alias 'champion' moved from version 1 (fid={best['fid']}" in out and "experiment grid," in out, out
    assert resolve_champion("ditscale", tracking_uri=sqlite_uri)["checkpoint"] == best2["checkpoint"]


def test_fit_points_without_mlflow_and_clear_errors(tmp_path, sqlite_uri, capsys):
    pts = [
        {"model": m, "params": n, "budget_flops": c, "flops": c, "fid": _fid(n, c), "val_loss": 1.0 + 1 / np.log(c)}
        for m, n in MODELS.items()
        for c in BUDGETS
    ]
    rep = fit_job.fit_points(pts, n_boot=10)
    assert {"convention", "frontier", "fid_law", "loss_law", "per_model", "isoflop", "models", "budgets"} <= set(rep)
    json.dumps(rep)  # JSON-ready
    with pytest.raises(fit_job.FitError, match=r"need 'fid' at >= 3 distinct compute budgets"):
        fit_job.fit_points(pts[:2])
    with pytest.raises(fit_job.FitError, match="point 0: needs a positive 'flops' or 'budget_flops'"):
        fit_job.fit_points([{"model": "x", "fid": 3.0}])

    client = get_client(sqlite_uri)
    _log_sweep(client, "tiny", str(tmp_path / "ck"), models={"DiT-T/2": 1e6}, budgets=BUDGETS[:2])
    assert fit_cli.main(["--experiment", "tiny", "--tracking-uri", sqlite_uri, "--out", str(tmp_path / "o")]) == 2
    assert "need 'fid' at >= 3 distinct compute budgets" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # a fit that fails leaves no empty --out folder
    assert report_job.main(["--experiment", "tiny", "--tracking-uri", sqlite_uri, "--metric", "bogus"]) == 2
    assert "--metric 'bogus': no point has it (2 points; their metrics: fid, val_loss)" in capsys.readouterr().err
    assert fit_cli.main(["--experiment", "nope", "--tracking-uri", sqlite_uri]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err
    assert not (tmp_path / "fit_reports" / "nope").exists()  # a mistyped experiment left an empty folder
    assert fit_cli.main(["--experiment", "nope", "--tracking-uri", sqlite_uri, "--out", str(tmp_path / "n" / "s")]) == 2
    assert not (tmp_path / "n").exists()
    (tmp_path / "afile").write_text("x")
    assert fit_cli.main(["--experiment", "tiny", "--tracking-uri", sqlite_uri, "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(RegistryError, match="ditscale"):
        resolve_champion("ditscale", tracking_uri=sqlite_uri)
    # An unknown parent run and a points record with a key this version does not know: one line, exit 2.
    for cmd in (fit_cli, report_job, promote_job):
        assert cmd.main(["--parent-run", "deadbeef", "--tracking-uri", sqlite_uri]) == 2
        assert "no run with id 'deadbeef'" in capsys.readouterr().err
    # A trial's run id: `report` printed "0 points" and exited 0, fit and promote said "no trial points yet".
    parent_id, best = _log_sweep(client, "trial-id", str(tmp_path / "t"))
    for cmd in (fit_cli, report_job, promote_job):
        assert cmd.main(["--parent-run", best["run_id"], "--tracking-uri", sqlite_uri]) == 2
        assert f"is a trial run of sweep run {parent_id}, not a sweep's" in capsys.readouterr().err
    _log_sweep(client, "odd", str(tmp_path / "odd"), extra={"bogus_key": 1})
    assert fit_cli.main(["--experiment", "odd", "--tracking-uri", sqlite_uri, "--no-log"]) == 2
    err = capsys.readouterr().err
    assert f"artifact {POINTS_ARTIFACT}: unknown config key(s): point.bogus_key" in err


def test_commands_that_read_a_sweep_never_create_an_empty_store(tmp_path, monkeypatch, capsys):
    """fit / report / promote / mup-report on a store that does not exist: a clear error, and no mlflow.db."""
    from jobs.cli import mup_report

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for cmd, name in ((fit_cli, "fit"), (report_job, "report"), (promote_job, "promote"), (mup_report, "mup-report")):
        assert cmd.main(["--experiment", "grid"]) == 2
        err = capsys.readouterr().err
        assert f"ditscale {name}: error: no MLflow store at '{tmp_path / 'mlflow.db'}'" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_tracking_uri_resolution_and_fail_fast(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sub/x.db") == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:1"
    with pytest.raises(TrackingURIError, match=r"http://127.0.0.1:\d+' is unreachable"):
        check_tracking_uri(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    # A server that accepts and never answers: one connection, timed out, then the error (no retries, and the
    # second probe is skipped). Connections wait in the listen queue whether or not they are accepted in time.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        with pytest.raises(TrackingURIError, match="timed out"):
            check_tracking_uri(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        silent.setblocking(False)
        attempts = 0
        while True:
            try:
                conn, _ = silent.accept()
            except BlockingIOError:
                break
            conn.close()
            attempts += 1
    assert attempts == 1, attempts
    with pytest.raises(TrackingURIError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    # A file that is not a database (a typo'd path) was a 27-frame SQLAlchemy traceback; an empty file is fine.
    (tmp_path / "notes.db").write_text("hello")
    with pytest.raises(TrackingURIError, match=r"notes.db' is not an SQLite database"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'notes.db'}")
    assert fit_cli.main(["--experiment", "e", "--tracking-uri", str(tmp_path / "notes.db")]) == 2
    (tmp_path / "empty.db").write_text("")
    check_tracking_uri(f"sqlite:///{tmp_path / 'empty.db'}")
    assert fit_cli.main(["--experiment", "e", "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 2


# --- a real tracking server on loopback -------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1:<free port>, sqlite backend, proxied artifacts in a temp dir; yields its URL."""
    with loopback_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as url:
        yield url


@pytest.mark.slow
def test_records_over_rest_server(mlflow_server, tmp_path, capsys, monkeypatch, s3_bucket):
    from pipelines.infra import storage

    monkeypatch.chdir(tmp_path)
    assert check_tracking_uri(mlflow_server) == mlflow_server
    client = get_client(mlflow_server)
    parent_id, best = _log_sweep(client, "rest-grid", f"{s3_bucket}/sweep")
    storage.upload_dir(_loadable_checkpoint(tmp_path / "best"), best["checkpoint"])  # promote loads it first

    _, points = sweep_points(client, parent_run_id=parent_id)  # search_runs + download_artifacts over REST
    assert len(points) == len(MODELS) * len(BUDGETS)
    assert (
        fit_cli.main(
            [
                "--parent-run",
                parent_id,
                "--tracking-uri",
                mlflow_server,
                "--out",
                str(tmp_path / "f"),
                "--n-boot",
                N_BOOT,
            ]
        )
        == 0
    )
    assert {a.path for a in client.list_artifacts(parent_id, "fit")} >= {"fit/fit_report.json", "fit/isoflop.png"}
    assert report_job.main(["--experiment", "rest-grid", "--tracking-uri", mlflow_server]) == 0
    assert "beta = " in capsys.readouterr().out
    assert (
        promote_job.main(
            [
                "--experiment",
                "rest-grid",
                "--tracking-uri",
                mlflow_server,
                "--model-name",
                "ditscale-rest",
                "--no-pyfunc",
            ]
        )
        == 0
    ), capsys.readouterr()
    champ = resolve_champion("ditscale-rest", tracking_uri=mlflow_server)
    assert champ["checkpoint"] == best["checkpoint"] and champ["fid"] == pytest.approx(best["fid"])


def _noisy(seed: int, rel: float = 0.15):
    """The synthetic surface with a seeded multiplicative noise per point: one training seed's draw of it."""
    rng = np.random.default_rng(seed)
    draws = {}
    return lambda n, c: _fid(n, c) * (1 + rel * draws.setdefault((n, c), float(rng.standard_normal())))


def test_fit_pools_seed_replicates(tmp_path, sqlite_uri, capsys):
    """`ditscale fit --replicate`: each point is the mean over the sweeps, with the spread as its standard error;
    sweeps evaluated differently or not found are refused, naming why."""
    from ditcore.config import to_dict
    from jobs.train.config import TrainConfig

    client = get_client(sqlite_uri)
    fids = {}

    def train(seed: int, lr: float = 4e-3) -> dict:
        cfg = to_dict(TrainConfig())
        cfg["run"]["seed"], cfg["optim"]["lr"] = seed, lr
        return cfg

    for seed in (0, 1, 2):
        fid = _noisy(seed)
        # each seed's sweep writes its own checkpoints (one checkpoint in two sweeps is one run, not two replicates)
        root = f"s3://bucket/grid-s{seed}"
        extra = {"fid_samples": 320, "fid_se": 1.0}
        _log_sweep(client, f"grid-s{seed}", root, fid=fid, extra=extra, train=train(seed))
        fids[seed] = {(m, c): fid(n, c) for m, n in MODELS.items() for c in BUDGETS}
    args = ["--experiment", "grid-s0", "--tracking-uri", sqlite_uri, "--n-boot", N_BOOT]
    rc = fit_cli.main([*args, "--out", str(tmp_path / "one")])
    assert rc == 0, capsys.readouterr()
    one = json.loads((tmp_path / "one" / "fit_report.json").read_text())
    assert "replicates" not in one
    rc = fit_cli.main([*args, "--replicate", "grid-s1", "--replicate", "grid-s2", "--out", str(tmp_path / "pooled")])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "each point the mean over 3 sweeps of the same grid (grid-s0, grid-s1, grid-s2)" in printed
    pooled = json.loads((tmp_path / "pooled" / "fit_report.json").read_text())
    reps = pooled["replicates"]
    assert reps["n_sweeps"] == 3 and reps["points_pooled"] == len(MODELS) * len(BUDGETS)
    assert reps["points_dropped"] == 0 and len(reps["parent_run_ids"]) == 3
    assert pooled["n_points"] == len(MODELS) * len(BUDGETS)
    for p in pooled["frontier"]:
        vals = [fids[s][(p["model"], p["budget_flops"])] for s in (0, 1, 2)]
        assert p["fid"] == pytest.approx(np.mean(vals))
        # the spread across the seeds (sd 15% of FID here) dominates each sweep's sampling se of 1.0
        assert p["fid_se"] == pytest.approx(max(np.std(vals, ddof=1), 1.0) / np.sqrt(3))
    # The mean is a different data set from one draw: the law moves.
    assert pooled["fid_law"]["params"]["beta"] != pytest.approx(one["fid_law"]["params"]["beta"])
    # Both are kept on grid-s0's run: the pooled fit beside the sweep's own, never over it.
    from pipelines.infra.tracking import read_json_artifact

    run = one["parent_run_id"]
    assert pooled["parent_run_id"] == run
    assert "replicates" not in read_json_artifact(client, run, "fit/fit_report.json")
    assert read_json_artifact(client, run, "fit_replicates/fit_report.json")["replicates"]["n_sweeps"] == 3
    metrics = client.get_run(run).data.metrics
    assert metrics["fit.fid.beta"] == pytest.approx(one["fid_law"]["params"]["beta"])
    assert metrics["fit.pooled.fid.beta"] == pytest.approx(pooled["fid_law"]["params"]["beta"])

    # A replicate scored with another sample count is not the same measurement.
    _log_sweep(client, "grid-640", "s3://bucket/grid-640", fid=_noisy(3), extra={"fid_samples": 640, "fid_se": 1.0})
    assert fit_cli.main([*args, "--replicate", "grid-640", "--no-log"]) == 2
    err = capsys.readouterr().err
    assert "fid_samples" in err and "320" in err and "640" in err
    # Another learning rate is another experiment, whatever its seed.
    _log_sweep(client, "grid-lr", "s3://bucket/grid-lr", fid=_noisy(4), extra=extra, train=train(4, lr=2e-3))
    assert fit_cli.main([*args, "--replicate", "grid-lr", "--no-log"]) == 2
    err = capsys.readouterr().err
    assert "grid-s0 and grid-lr trained model" in err and "(optim.lr: 0.004 vs 0.002): not seed replicates" in err
    assert fit_cli.main([*args, "--replicate", "no-such-sweep", "--no-log"]) == 2
    assert "no-such-sweep" in capsys.readouterr().err
    assert fit_cli.main([*args, "--replicate", "grid-s0", "--no-log"]) == 2
    assert "already in the fit" in capsys.readouterr().err


def test_fit_and_report_refuse_what_they_cannot_fit_and_never_show_a_stale_law(tmp_path, sqlite_uri, capsys):
    pts = [
        {"model": m, "params": n, "budget_flops": c, "flops": c, "fid": _fid(n, c), "val_loss": 1.0 + 1 / np.log(c)}
        for m, n in MODELS.items()
        for c in BUDGETS
    ]
    # A metric that grows as models improve would fit the worst model at each budget.
    with pytest.raises(fit_job.FitError, match="'attr_acc' grows as models improve"):
        fit_job.fit_points([{**p, "attr_acc": 0.5} for p in pts], metric="attr_acc")
    # A zero or negative FID is a broken evaluation, named; it used to become a budget's frontier point.
    bad = [dict(p) for p in pts]
    bad[3].update(fid=-5.0, run_id="r3")
    with pytest.raises(fit_job.FitError, match=r"point 3 \(run r3\): fid=-5.0 for model 'DiT-T/2' at budget 1e\+17"):
        fit_job.fit_points(bad, n_boot=5)
    # A NaN FID is left out, and the diagnostics say which point and what that does to the frontier.
    nan = [dict(p) for p in pts]
    nan[0]["fid"] = float("nan")
    codes = {d["code"]: d["message"] for d in fit_job.fit_points(nan, n_boot=5)["diagnostics"]}
    assert (
        "1 point(s) have a non-finite fid and are left out of every fit (DiT-T/2 at 1e+14)"
        in codes["non_finite_metric"]
    )

    client = get_client(sqlite_uri)
    parent, _ = _log_sweep(client, "team/sweep", None)
    args = ["--experiment", "team/sweep", "--tracking-uri", sqlite_uri, "--n-boot", N_BOOT]
    assert fit_cli.main(args) == 0, capsys.readouterr().err
    assert "wrote " + str(tmp_path / "fit_reports" / "team_sweep" / "fit_report.json") in capsys.readouterr().out
    assert fit_cli.main(["--experiment", "team/sweep", "--tracking-uri", "file:///nowhere/mlruns"]) == 2
    assert "MLflow tracking URI 'file:///nowhere/mlruns' cannot be used" in capsys.readouterr().err

    # One more trial after the fit: the stored law no longer describes the sweep, so report fits again.
    exp_id = client.get_experiment_by_name("team/sweep").experiment_id
    child = client.create_run(exp_id, run_name="late", tags={ROLE_TAG: ROLE_TRIAL, PARENT_TAG: parent})
    late = [
        {**p, "model": "DiT-L/2", "params": 6.4e7, "step": 100 * (i + 1), "checkpoint": f"s3://b/late/{i}"}
        for i, p in enumerate(pts[:4])
    ]
    client.log_text(child.info.run_id, json.dumps(late), POINTS_ARTIFACT)
    client.set_terminated(child.info.run_id)
    assert report_job.main(["--experiment", "team/sweep", "--tracking-uri", sqlite_uri, "--n-boot", N_BOOT]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "16 points from 4 trials (the stored fit is out of date" in header and "fitted now" in header
    # --json is standard JSON, a NaN included.
    late_nan = [{**late[0], "fid": float("nan")}]
    child = client.create_run(exp_id, run_name="nan", tags={ROLE_TAG: ROLE_TRIAL, PARENT_TAG: parent})
    client.log_text(child.info.run_id, json.dumps(late_nan), POINTS_ARTIFACT)
    client.set_terminated(child.info.run_id)
    assert report_job.main(["--experiment", "team/sweep", "--tracking-uri", sqlite_uri, "--json", "--n-boot", "5"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert any(p["fid"] is None for p in doc["points"])


def test_a_refit_without_a_value_does_not_leave_the_earlier_fits_as_the_latest(sqlite_uri):
    """A refit whose held-out check is skipped (or whose law fails) logged nothing for it, so the sweep run kept
    the earlier fit's held-out error beside the new beta."""
    import math

    from jobs.scaling.fit import log_law_metrics

    client = get_client(sqlite_uri)
    run = client.create_run(ensure_experiment(client, "refit")).info.run_id
    log_law_metrics(
        client, run, {"params": {"A": 5.0, "beta": 0.4, "FID_inf": 9.0}, "held_out": {"rel_error": 0.1}}, "fit.fid"
    )
    assert client.get_run(run).data.metrics["fit.fid.held_out_rel_error"] == pytest.approx(0.1)
    log_law_metrics(
        client, run, {"params": {"A": 6.0, "beta": 0.5, "FID_inf": 8.0}, "held_out": {"skipped": "3"}}, "fit.fid"
    )
    metrics = client.get_run(run).data.metrics
    assert metrics["fit.fid.beta"] == pytest.approx(0.5) and math.isnan(metrics["fit.fid.held_out_rel_error"])
    log_law_metrics(client, run, {"error": "too few budgets"}, "fit.fid")
    assert all(math.isnan(client.get_run(run).data.metrics[f"fit.fid.{k}"]) for k in ("A", "beta", "FID_inf"))
