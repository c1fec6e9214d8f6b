"""Sweep driver: a tiny 2-model x 2-budget WSD grid end to end (Ray Tune -> Ray Train -> FID -> MLflow), with the
driver SIGKILLed mid-trial (one trial done, the next half-way) and restarted: only the missing trial runs, resuming
from its own checkpoints, and the MLflow record (parent run, one child per trial, points.json) reads back through
MlflowClient."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ditcore.config import ConfigError
from jobs.cli.sweep import main
from jobs.sweep.driver import load_sweep_config
from jobs.sweep.grid import expand_grid, plan_trials, trial_configs
from tests.conftest import REPO_ROOT
from tests.jobs._train_helpers import TEXT_BUILTIN, make_eval_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_eval_dataset(tmp_path_factory.mktemp("sweepdata"), n=16, **TEXT_BUILTIN)[0]


def _write_cfg(tmp_path: Path, dataset: str, **extra) -> Path:
    cfg = {
        "name": "t",
        "output": str(tmp_path / "sweeps"),
        "base": {
            "model": {"preset": "MMDiT-T"},
            "data": {"manifest": dataset, "batch_size": 8, "val_samples": 4},
            "optim": {"warmup_steps": 1, "lr": 0.003, "decay_fraction": 0.5},
            "eval": {"num_samples": 8, "sampler": "euler", "steps": 2},
            "run": {"num_workers": 1, "cpus_per_worker": 1},
            "mlflow": {"log_every": 2},
            # A checkpoint every step (all kept), so a driver killed mid-trial leaves checkpoints to resume from.
            "checkpoint": {"every_n_steps": 1, "keep": 20},
        },
        "models": [{"depth": 1}, "MMDiT-T"],
        "budgets": [1.0e15],
        "mode": "wsd",
        "max_concurrent": 1,
        "num_cpus": 4,
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "sweep-test"},
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _budgets(path: Path, steps: tuple[int, ...]) -> list[float]:
    """Budgets (FLOPs) giving `steps` optimizer steps for the LARGER model of the grid."""
    from jobs.train.plan import resolve_run

    trials = expand_grid(load_sweep_config(str(path)))
    one = resolve_run(trials[-1].train, check_mlflow=False).train_flops_per_image * 8
    return [one * s for s in steps]


def _checkpoint_files(trial_dir: Path) -> list[Path]:
    """model.safetensors of every checkpoint of a trial's runs, in the order written (run, then step)."""
    files = [f for f in trial_dir.glob("*/checkpoints/step_*/model.safetensors")]
    return sorted(files, key=lambda f: (f.stat().st_mtime_ns, str(f)))


def test_bad_sweep_config_names_the_key(tmp_path, dataset):
    path = _write_cfg(tmp_path, dataset, budgets=[1e9])
    with pytest.raises(ConfigError, match="base.optim.learning_rate"):
        expand_grid(load_sweep_config(str(path), ["base.optim.learning_rate=1"]))
    with pytest.raises(ConfigError, match="unknown config key"):
        load_sweep_config(str(path), ["bogus=1"])
    assert main(["--config", str(path), "budgets=[10]", "--validate-only"]) == 2  # < one step: named, exit 2
    # A dotted hparams key given as an override nests like any other; it means the same dotted TrainConfig key.
    cfg = load_sweep_config(str(path), ["hparams.optim.lr=[0.001, 0.002]"])
    assert cfg.hparams == {"optim.lr": [0.001, 0.002]}
    assert sorted(t.train.optim.lr for t in expand_grid(cfg)) == sorted([0.001, 0.002] * len(cfg.models))
    # The command line takes the documented dotted form too (it went through a loader that refused it).
    assert main(["--config", str(path), "hparams.optim.lr=[0.001, 0.0003]", "--validate-only"]) == 0
    # What would fail only after training (or train twice) is refused up front, naming the key.
    for override in ("base.eval.num_samples=1", "base.eval.seed=-5", "base.eval.classifier=/nonexistent"):
        assert main(["--config", str(path), override, "--validate-only"]) == 2, override
    for override, message in (
        ("budgets=[1e9, 1e9]", "budgets: [1000000000.0] given more than once"),
        ("base.eval.budgets=[1e8]", "base.eval.budgets: not used with mode: wsd"),
        (
            'hparams={"budget_flops": [1e9]}',
            "hparams.budget_flops: not a hyper-parameter of a sweep (the budgets are the grid's `budgets`",
        ),
        ("name=../x", "name: '../x' must be one folder name"),
        ("mlflow.experiment=", "mlflow.experiment: must be a non-empty experiment name"),
        (f"output={path}", f"output: '{path}' is a file"),
        ("budgets=[NaN]", "budgets: must be finite positive FLOPs, got [nan]"),
        ("max_concurrent=-3", "max_concurrent must be >= 0"),
        ("trial_cpus=0", "trial_cpus must be a finite number > 0, got 0.0"),
        ("num_cpus=0", "num_cpus must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            expand_grid(load_sweep_config(str(path), [override]))


def test_budgets_less_than_one_step_apart_are_refused_naming_both(tmp_path, dataset, capsys):
    """Two budgets that round to the same step count would train the same run twice under two labels."""
    path = _write_cfg(tmp_path, dataset, models=["MMDiT-T"])
    one = _budgets(path, (1,))[0]
    close = f"budgets=[{2.5 * one!r}, {3.0 * one!r}]"
    with pytest.raises(ConfigError, match=r"budgets: .* both train MMDiT-T.* for 3 steps \(one step is"):
        plan_trials(expand_grid(load_sweep_config(str(path), [close])), "wsd")
    assert main(["--config", str(path), close, "--validate-only"]) == 2
    assert "both train" in capsys.readouterr().err
    # a step apart they are two runs
    assert main(["--config", str(path), f"budgets=[{2.0 * one!r}, {3.0 * one!r}]", "--validate-only"]) == 0


def test_a_sweep_without_its_own_store_uses_its_bases(tmp_path, dataset, monkeypatch):
    """Every trial is validated against (and logs to) the base config's store; the sweep's parent run used to go to
    the default store instead."""
    from jobs.sweep.driver import sweep_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'default.db'}")
    base_db, own_db = f"sqlite:///{tmp_path / 'base.db'}", f"sqlite:///{tmp_path / 'own.db'}"
    path = _write_cfg(tmp_path, dataset, mlflow={"experiment": "sweep-test"})
    assert sweep_tracking_uri(load_sweep_config(str(path), [f"base.mlflow.tracking_uri={base_db}"])) == base_db
    both = [f"base.mlflow.tracking_uri={base_db}", f"mlflow.tracking_uri={own_db}"]
    assert sweep_tracking_uri(load_sweep_config(str(path), both)) == own_db  # the sweep's own comes first
    assert sweep_tracking_uri(load_sweep_config(str(path))) == f"sqlite:///{tmp_path / 'default.db'}"


def test_a_model_entry_sets_its_own_hyper_parameters(tmp_path, dataset, capsys):
    path = _write_cfg(tmp_path, dataset, budgets=[1e9])
    per_model = '[{"preset": "MMDiT-T", "set": {"optim.lr": 0.004}}, {"depth": 1, "set": {"optim.lr": 0.001}}]'
    trials = expand_grid(load_sweep_config(str(path), [f"models={per_model}"]))
    assert [t.train.optim.lr for t in trials] == [0.004, 0.001]
    assert [t.hparams for t in trials] == [{"optim.lr": 0.004}, {"optim.lr": 0.001}]  # recorded with every point
    assert trials[0].train.model.preset == "MMDiT-T" and trials[1].train.model.overrides["depth"] == 1
    # the same trial (same id, so a finished one is reused) as that model swept by hparams at that value
    swept = expand_grid(load_sweep_config(str(path), ['models=["MMDiT-T"]', 'hparams={"optim.lr": [0.004]}']))
    assert swept[0].trial_id == trials[0].trial_id
    # ... and as that model trained at that learning rate by the base config, with no sweep axis at all: a swept
    # value equal to the base is the same trial and the same training runs (it retrained before).
    plain = expand_grid(load_sweep_config(str(path), ['models=["MMDiT-T"]', "base.optim.lr=0.004"]))
    assert (plain[0].trial_id, plain[0].runs_id) == (swept[0].trial_id, swept[0].runs_id)
    # Adding an axis whose only value is the base setting keeps every id; another value is another trial.
    base_wd = plain[0].train.optim.weight_decay
    axes = expand_grid(
        load_sweep_config(
            str(path),
            ['models=["MMDiT-T"]', "base.optim.lr=0.004", f'hparams={{"optim.weight_decay": [{base_wd}, 0.5]}}'],
        )
    )
    assert axes[0].trial_id == plain[0].trial_id and axes[0].runs_id == plain[0].runs_id
    assert axes[1].trial_id != plain[0].trial_id and axes[1].runs_id != plain[0].runs_id
    # The same for an evaluation axis: at the base value the base's trial and training runs (its training id held
    # the axis by name, so the runs were trained again); another value is another trial of the same training.
    steps = plain[0].train.eval.steps
    ev = expand_grid(
        load_sweep_config(
            str(path),
            ['models=["MMDiT-T"]', "base.optim.lr=0.004", f'hparams={{"eval.steps": [{steps}, {steps + 7}]}}'],
        )
    )
    assert (ev[0].trial_id, ev[0].runs_id) == (plain[0].trial_id, plain[0].runs_id)
    assert ev[1].trial_id != plain[0].trial_id and ev[1].runs_id not in (plain[0].runs_id, ev[1].trial_id)

    # A finished trial reused by a grid that names it otherwise (the axis added at the base value) is recorded with
    # this grid's settings: its points carried the first grid's (none), which mup-report and the fit's labels read.
    from jobs.scaling.points import ScalingPoint, read_points
    from jobs.sweep.trial import DONE, restamped
    from pipelines.infra import tracking

    uri = f"sqlite:///{tmp_path / 'r.db'}"
    client = tracking.client(uri, check=False)
    parent, _ = tracking.attach_run(client, str(tmp_path / "p.json"), experiment="x", name="sweep")
    client.set_tag(parent, tracking.ROLE_TAG, tracking.ROLE_SWEEP)
    tags = {tracking.ROLE_TAG: tracking.ROLE_TRIAL}
    child, _ = tracking.attach_run(
        client, str(tmp_path / "c.json"), experiment="x", name="t", tags=tags, parent_run_id=parent
    )
    point = ScalingPoint("MMDiT-T", 1, 1e9, 1e9, 3, str(tmp_path / "ck"), fid=9.0, trial_id="a")
    client.log_text(child, json.dumps([point.to_dict()]), tracking.POINTS_ARTIFACT)
    tracking.end_run(client, child, "finished")
    (tmp_path / "trial").mkdir()
    record = {"trial_id": "a", "name": plain[0].name, "arm": None, "points": [point.to_dict()], "mlflow_run_id": child}
    assert restamped(plain[0], str(tmp_path / "trial"), record, uri) is record  # named the same: untouched
    now = restamped(axes[0], str(tmp_path / "trial"), record, uri)
    assert [p["hparams"] for p in now["points"]] == [{"optim.weight_decay": base_wd}]
    assert json.loads((tmp_path / "trial" / DONE).read_text()) == now and now["name"] == axes[0].name
    (read,) = read_points(client, parent_run_id=parent)[1]
    assert read.hparams == {"optim.weight_decay": base_wd} and read.fid == 9.0
    # A child run deleted in the UI cannot be restamped: a warning, and done.json is left to try again next time.
    client.delete_run(child)
    before = (tmp_path / "trial" / DONE).read_text()
    later = restamped(axes[1], str(tmp_path / "trial"), now, uri)
    assert later["name"] == axes[1].name and (tmp_path / "trial" / DONE).read_text() == before
    assert "keeps the hyper-parameters of the grid that ran it" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sets optim.lr, which hparams also sweeps"):
        expand_grid(load_sweep_config(str(path), [f"models={per_model}", 'hparams={"optim.lr": [0.002]}']))
    with pytest.raises(ConfigError, match="must map dotted keys to single values"):
        expand_grid(load_sweep_config(str(path), ['models=[{"preset": "MMDiT-T", "set": {"optim.lr": [1, 2]}}]']))
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        expand_grid(load_sweep_config(str(path), ['models=[{"preset": "MMDiT-T", "set": {"optim.learning_rate": 1}}]']))


def test_evaluation_settings_make_new_trials_of_the_same_training_runs(tmp_path, dataset):
    """A trial id hashes every setting; its training id leaves out those that change no weights, so a rerun with
    another sampler, guidance, sample count or evaluation seed evaluates the runs already trained."""
    path = _write_cfg(tmp_path, dataset, budgets=[1e9, 2e9])

    def grid(*overrides: str) -> list:
        return expand_grid(load_sweep_config(str(path), list(overrides)))

    before = grid()
    evaluation = ("base.eval.sampler=dpmpp-2m", "base.eval.guidance=4", "base.eval.num_samples=16", "base.eval.seed=3")
    for override in evaluation:
        after = grid(override)
        assert [t.trial_id for t in after] != [t.trial_id for t in before], override
        assert [t.runs_id for t in after] == [t.runs_id for t in before], override
        assert [t.train.checkpoint.storage for t in after] == [t.train.checkpoint.storage for t in before]
    # What training keeps or does (learning-curve checkpoints, the optimizer) gives other training runs.
    changes_weights = ("base.run.deterministic=true", "base.run.grad_accum=2", "base.checkpoint.init_from=/r/ck/step_1")
    for override in ("base.eval.val_every=2", "base.optim.lr=0.001", "base.run.seed=1", *changes_weights):
        assert not {t.runs_id for t in grid(override)} & {t.runs_id for t in before}, override
    # Trials of one grid that differ only in evaluation train apart (never two writers in one run directory).
    swept = grid('hparams={"eval.guidance": [1.0, 4.0]}')
    assert len({t.runs_id for t in swept}) == len(swept) == 2 * len(before)
    (run_names,) = {tuple(c.run.name for c, _, _ in trial_configs(t, "wsd")) for t in before[:1]}
    assert run_names == (f"{before[0].runs_id}-main", f"{before[0].runs_id}-b0")


@pytest.mark.slow
def test_sweep_end_to_end_with_killed_driver_resume(tmp_path, dataset):
    path = _write_cfg(tmp_path, dataset)
    cfg = yaml.safe_load(path.read_text())
    cfg["budgets"] = _budgets(path, (2, 4))
    # The second trial (the larger model: of equal FLOPs the smallest model runs first) hangs before step 3 of its
    # main run, once: the driver is killed in that state, however fast the machine (polling alone missed it).
    hang = {"debug.inject_failure": {"step": 3, "mode": "hang"}}
    cfg["models"] = [cfg["models"][0], {"preset": cfg["models"][1], "set": hang}]
    path.write_text(yaml.safe_dump(cfg))
    trials = expand_grid(load_sweep_config(str(path)))
    tdir = tmp_path / "sweeps" / "t" / "trials"
    rdir = Path(trials[0].train.checkpoint.storage)  # <sweep>/runs: <training id>/<run>/checkpoints/step_*
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    # 1) Start the driver; SIGKILL it (and the local Ray it started) mid-run: once one trial is done and another
    #    has written at least two checkpoints, not finished its main run, and hangs (its marker written).
    log1 = open(tmp_path / "driver1.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900  # generous: the first trial alone can take minutes on a loaded 2-core machine
    kept: list[Path] = []
    interrupted = interrupted_runs = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = {p.parent.name for p in tdir.glob("*/done.json")} if tdir.exists() else set()
            for t in trials:
                ckpts = _checkpoint_files(rdir / t.runs_id)
                main = rdir / t.runs_id / f"{t.runs_id}-main"
                main_done, hung = (main / "result.json").exists(), (main / "_injected_failure_step3").exists()
                assert not hung or done, "the hanging trial ran first: nothing is done to resume around"
                if hung and done and t.trial_id not in done and len(ckpts) >= 2 and not main_done:
                    # Every checkpoint but the newest (which Ray Train may not have registered yet) is one the
                    # restarted trial can resume from; a restart from scratch would rewrite them all.
                    kept, interrupted, interrupted_runs = ckpts[:-1], t.trial_id, t.runs_id
                    break
            if interrupted:
                break
            time.sleep(0.2)
        alive_at_kill = proc.poll() is None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        log1.close()
    seen = {str(f): (f.stat().st_mtime_ns, f.stat().st_ino, f.read_bytes()) for f in kept}
    log_tail = (tmp_path / "driver1.log").read_text()[-3000:]
    assert interrupted and alive_at_kill, log_tail  # killed while a trial was half-way through its runs
    assert proc.returncode == -signal.SIGKILL, log_tail
    done_first = sorted(p.parent.name for p in tdir.glob("*/done.json"))
    assert len(done_first) >= 1 and interrupted not in done_first, log_tail
    first_record = (tdir / done_first[0] / "done.json").read_text()

    # 2) Restart with the same config: only the missing trial runs, and the interrupted one resumes from its own
    #    checkpoints (left untouched: same inode, mtime and bytes) to the end of its budgets.
    def rerun(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cmd, *extra], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, start_new_session=True
        )

    out = rerun()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{len(done_first)} already done, {len(trials) - len(done_first)} to run" in out.stdout
    assert (tdir / done_first[0] / "done.json").read_text() == first_record  # finished trial untouched
    for name, (mtime, ino, data) in seen.items():
        f = Path(name)
        assert (f.stat().st_mtime_ns, f.stat().st_ino) == (mtime, ino) and f.read_bytes() == data, name
    resumed = json.loads((tdir / interrupted / "done.json").read_text())
    assert resumed["status"] == "finished" and len(resumed["points"]) == 2
    assert len(_checkpoint_files(rdir / interrupted_runs)) > len(seen)  # it trained on past the kept checkpoints
    # What the restart trained is what it counts: the runs without a result when it started, none of those trained
    # before. The main run hung until the kill, so the restart trained it; its short branch may have finished first.
    results = [json.loads(f.read_text()) for f in (rdir / interrupted_runs).glob("*/result.json")]
    assert len(results) == 2 and set(resumed["trained_before"]) <= {r["run_name"] for r in results}
    assert f"{interrupted_runs}-main" not in resumed["trained_before"]
    trained_now = sum(r["flops_run"] for r in results if r["run_name"] not in resumed["trained_before"])
    assert trained_now > 0 and resumed["train_flops"] == pytest.approx(trained_now)

    # 3) The MLflow record, read back through the client.
    from mlflow import MlflowClient

    from pipelines.infra.tracking import child_runs, find_parent_run, load_points

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = find_parent_run(client, "sweep-test")
    assert parent.data.tags["ditscale.role"] == "sweep" and parent.info.status == "FINISHED"
    # Goodput of the restarted invocation (the trial it ran): training FLOPs over wall x measured peak, and the
    # CPU-seconds of every phase, which with idle add up to wall x CPUs.
    m = parent.data.metrics
    assert m["time_eval_s"] > 0 and (m["goodput"] > 0) == (m["time_step_s"] > 0) == (trained_now > 0)
    good = json.loads(Path(client.download_artifacts(parent.info.run_id, "goodput.json", str(tmp_path))).read_text())
    assert good["trials"] == 1 and good["train_flops"] == pytest.approx(trained_now)
    assert m["goodput"] == pytest.approx(trained_now / (good["wall_s"] * good["peak_flops"])) and m["goodput"] < 1
    # The peak was measured before and after the trials; goodput divides by the better reading.
    assert len(good["peak_flops_measured"]) == 2 and good["peak_flops"] == max(good["peak_flops_measured"]) > 0
    assert sum(good["time"].values()) == pytest.approx(good["wall_s"] * good["num_cpus"], rel=0.02)
    children = [r for r in child_runs(client, parent.info.run_id) if r.data.tags.get("ditscale.role") == "trial"]
    assert sorted(r.data.tags["ditscale.trial_id"] for r in children) == sorted(t.trial_id for t in trials)
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("model", "params", "train_flops_per_image", "budgets", "lr", "batch_size", "data_manifest"):
            assert key in run.data.params
        assert {"loss", "val_loss", "images_per_s", "mfu", "peak_flops", "train_flops", "fid"} <= set(run.data.metrics)
        points = load_points(client, run.info.run_id)
        assert [p["budget_flops"] for p in points] == pytest.approx(cfg["budgets"])
        for p in points:
            assert p["fid"] is not None and p["fid"] >= 0 and p["val_loss"] is not None
            assert Path(p["checkpoint"]).is_dir() and p["params"] > 0
        # WSD: the small budget branches from the main run's checkpoint at its decay start.
        assert points[0]["run"].endswith("-b0") and points[1]["run"].endswith("-main")
    record = json.loads(first_record)
    assert record["status"] == "finished" and len(record["points"]) == 2

    # 4) The same grid with an axis at the base value: every trial is done (same ids), nothing runs, and the
    #    trials' records and MLflow points carry this grid's hyper-parameters (they kept the first grid's: none).
    wd = trials[0].train.optim.weight_decay
    again = rerun(f'hparams={{"optim.weight_decay": [{wd}]}}')
    assert again.returncode == 0 and f"{len(trials)} already done, 0 to run" in again.stdout, again.stdout[-3000:]
    for run in children:
        assert {p["hparams"]["optim.weight_decay"] for p in load_points(client, run.info.run_id)} == {wd}
    for t in trials:
        assert {
            p["hparams"]["optim.weight_decay"]
            for p in json.loads((tdir / t.trial_id / "done.json").read_text())["points"]
        } == {wd}


def test_keys_the_sweep_sets_itself_are_refused_as_hyper_parameters(tmp_path, dataset):
    """Swept or set per model, they were overwritten: two trials of one training under two labels (a cosine trial
    trained with wsd), a main run shorter than its largest budget, learning-curve points evaluated then dropped."""
    path = _write_cfg(tmp_path, dataset, budgets=[1e9, 2e9])
    refused = [
        ('hparams={"optim.schedule": ["cosine", "wsd"]}', "hparams.optim.schedule: not a hyper-parameter"),
        ('hparams={"eval.budgets": [[1e9]]}', "hparams.eval.budgets: not a hyper-parameter"),
        ('hparams={"run.name": ["a", "b"]}', "hparams.run.name: not a hyper-parameter"),
        ('hparams={"mlflow.experiment": ["a", "b"]}', "hparams.mlflow.experiment: not a hyper-parameter"),
        ('models=[{"preset": "MMDiT-T", "set": {"budget_flops": 5e8}}]', "set budget_flops: not a hyper-parameter"),
        ("base.eval.fractions=[0.5]", "base.eval.fractions: not used with mode: wsd"),
    ]
    for override, message in refused:
        with pytest.raises(ConfigError, match=re.escape(message)):
            expand_grid(load_sweep_config(str(path), [override]))
    # A duplicate trial is named.
    with pytest.raises(ConfigError, match=r"the trial MMDiT-T\[lr=0.001\] twice"):
        expand_grid(load_sweep_config(str(path), ['models=["MMDiT-T"]', 'hparams={"optim.lr": [1e-3, 0.001]}']))
    # In mode: separate the schedule is a hyper-parameter like any other.
    trials = expand_grid(
        load_sweep_config(str(path), ["mode=separate", 'hparams={"optim.schedule": ["cosine", "wsd"]}'])
    )
    assert {t.train.optim.schedule for t in trials} == {"cosine", "wsd"}
