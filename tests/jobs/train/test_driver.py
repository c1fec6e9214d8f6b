"""Ray Train job: DDP equivalence, deterministic resume after an injected worker failure, NaN stop, bad config,
checkpoints on S3. One local Ray instance per module; tiny MM-DiT on an 8x8 latent set, a handful of steps."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ditcore.config import ConfigError
from jobs.cli.train import main
from jobs.train.config import TrainConfig
from jobs.train.driver import run_local, run_training
from jobs.train.plan import resolve_run
from pipelines.infra.config_files import load_config
from tests.conftest import free_port
from tests.jobs._train_helpers import TINY_OPTIM, budget_override, config_maker, make_latent_dataset

_cfg = config_maker("mlflow.experiment=test-train", *TINY_OPTIM, "run.deterministic=true", "mlflow.log_every=1")


def _weights(ckpt_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt_dir) / "model.safetensors"))


def _resumed_and_reference(manifest: str, tmp: Path, failure: str, *extra: str) -> tuple[dict, dict]:
    """A 6-step run (`extra`) whose worker dies once at `failure` (checkpoints every 2 steps, one restart allowed)
    and one uninterrupted local worker (tmp/local) with the same budget; both checked to end at step 6, the failure
    checked to have really happened (its marker in the run directory). Returns (run_training's, run_local's)."""
    steps = budget_override(_cfg(manifest, tmp), 6)
    overrides = ["checkpoint.every_n_steps=2", "run.max_failures=1", f"debug.inject_failure={failure}"]
    out = run_training(_cfg(manifest, tmp, steps, *extra, *overrides))
    assert out["status"] == "finished" and out["steps"] == 6
    assert (Path(out["run_dir"]) / "_injected_failure_step3").exists()  # a worker really died once and was replaced
    ref = run_local(_cfg(manifest, tmp, steps, "run.name=ref"), str(tmp / "local"))
    assert ref["steps"] == 6
    return out, ref


@pytest.mark.slow
def test_two_workers_ddp_equals_one_worker(ray_local, data8, tmp_path):
    cfg = _cfg(data8, tmp_path, "run.num_workers=2", "run.cpus_per_worker=1", "run.name=ddp2", steps=3)
    out = run_training(cfg)
    assert out["status"] == "finished" and out["steps"] == 3
    run_local(_cfg(data8, tmp_path, "run.name=ref", steps=3), str(tmp_path / "local"))
    a = _weights(Path(out["run_dir"]) / "checkpoints" / "step_00000003")
    b = _weights(tmp_path / "local" / "checkpoints" / "step_00000003")
    moved = any(not torch.equal(v, torch.zeros_like(v)) for v in b.values())
    assert moved  # the update is not trivially zero (adaLN-Zero init)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=f"param {k} differs")


@pytest.mark.slow
def test_resume_after_worker_failure_is_exact(ray_local, data8, tmp_path):
    out, ref = _resumed_and_reference(data8, tmp_path, '{"step": 3, "mode": "exit"}', "run.name=faulty")
    run_dir = Path(out["run_dir"])
    a = _weights(run_dir / "checkpoints" / "step_00000006")
    b = _weights(tmp_path / "local" / "checkpoints" / "step_00000006")
    for k in a:
        assert torch.equal(a[k], b[k]), f"param {k} differs after resume"
    ema_a = load_file(str(run_dir / "checkpoints" / "step_00000006" / "ema.safetensors"))
    ema_b = load_file(str(tmp_path / "local" / "checkpoints" / "step_00000006" / "ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # No jump back in the loss curve: the logged loss at each step equals the uninterrupted run's.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    hist = {m.step: m.value for m in client.get_metric_history(out["mlflow_run_id"], "loss")}
    ref_loss = {r[0]["step"]: r[0]["loss"] for r in ref["reports"]}
    for step, value in ref_loss.items():
        assert hist[step] == pytest.approx(value, rel=1e-6)
    state = json.loads((run_dir / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["step"] == 6 and state["images_seen"] == 48
    # The replaced worker's steps 1-2 (checkpointed, resumed from) were trained by this run too: its FLOPs count
    # all 6 steps, as the sweep's goodput reads them; the fit's start marker is gone with the result.
    assert out["flops_run"] == pytest.approx(out["train_flops"]) and out["train_flops"] > 0
    assert not list(run_dir.glob(".fit-*.json"))
    from pipelines.infra.code import training_code_fingerprint

    # Resumed by the same code: one fingerprint, recorded once.
    assert state["codes"] == [training_code_fingerprint()] == json.loads((run_dir / "result.json").read_text())["codes"]
    # ... and by the same software: one Python / torch / numpy record, carried over from the checkpoint once.
    from pipelines.infra.code import software_versions

    assert [software_versions()] == state["software"] == json.loads((run_dir / "result.json").read_text())["software"]
    assert state["software"][0]["torch"] == torch.__version__
    assert state["data_position"] == {"epoch": 5, "batch_in_epoch": 1}  # 8 rows = 1 batch per epoch
    # Where it ran: the worker's software and machine, in result.json and as the MLflow run's env.* tags.
    from pipelines.infra.code import environment

    env = json.loads((run_dir / "result.json").read_text())["env"]
    here = environment()
    assert {k: env[k] for k in ("python", "torch", "numpy", "ray", "cpu")} == {
        k: here[k] for k in ("python", "torch", "numpy", "ray", "cpu")
    }
    assert env["torch"] == torch.__version__ and env["cpus"] >= 1
    tags = client.get_run(out["mlflow_run_id"]).data.tags
    assert (
        tags["env.torch"] == torch.__version__
        and tags["env.cpu"] == env["cpu"]
        and tags["env.cpus"] == str(env["cpus"])
    )


@pytest.mark.slow
def test_nan_loss_stops_trial_and_keeps_last_good_checkpoint(ray_local, data8, tmp_path):
    nan_at_2 = 'debug.inject_failure={"step": 2, "mode": "nan"}'
    out = run_training(_cfg(data8, tmp_path, "run.name=nanrun", "checkpoint.every_n_steps=1", nan_at_2, steps=5))
    assert out["status"] == "failed" and "non-finite loss" in out["reason"]
    ckpts = sorted(p.name for p in (Path(out["run_dir"]) / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts[-1] == "step_00000002"  # steps 0,1 done; the NaN update (step index 2) is never checkpointed
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(out["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "non-finite loss" in run.data.tags["ditscale.failure_reason"]


def test_an_infinite_gradient_norm_with_a_finite_loss_is_divergence(data8, tmp_path):
    # lr 1e6: by step 3 the loss is huge but finite (4e28) while the gradient norm is inf. Before this check the run
    # "finished" (optim.lr=1e6 reached a loss of 1.45e31 on the quickstart data).
    out = run_local(_cfg(data8, tmp_path, "optim.lr=1e6", "run.name=blowup", steps=8), str(tmp_path / "local"))
    assert out["status"] == "failed", out
    assert re.fullmatch(r"non-finite gradient norm \(inf\) at step \d+ \(loss [0-9.e+]+\): diverged", out["reason"])


def test_without_gradient_clipping_diverged_weights_are_never_checkpointed(data8, tmp_path):
    # grad_clip 0 computes no gradient norm: an infinite gradient turns the weights to NaN while the loss read at
    # that step (the batch before the update) is finite. A checkpoint there kept NaN weights as the "last good" one,
    # which every rerun resumed from.
    inf_at_2 = 'debug.inject_failure={"step": 2, "mode": "inf_grad"}'
    cfg = _cfg(data8, tmp_path, "optim.grad_clip=0", "checkpoint.every_n_steps=1", "run.name=noclip", inf_at_2, steps=5)
    out = run_local(cfg, str(tmp_path / "local"))
    assert out["status"] == "failed", out
    assert re.fullmatch(r"non-finite weights after the update of step 3 \(loss [0-9.e+-]+\): diverged", out["reason"])
    ckpts = sorted(p.name for p in (tmp_path / "local" / "checkpoints").glob("step_*"))
    assert ckpts[-1] == "step_00000002", ckpts
    for name in ckpts:
        weights = load_file(str(tmp_path / "local" / "checkpoints" / name / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), name


def test_a_run_started_from_another_runs_checkpoint_keeps_its_own_optimizer_settings(data8, tmp_path):
    src = run_local(_cfg(data8, tmp_path, "run.name=src", steps=2), str(tmp_path / "src"))
    assert src["status"] == "finished", src
    ck = tmp_path / "src" / "checkpoints" / "step_00000002"
    hp = ["optim.lr=0.0005", "optim.betas=[0.8,0.95]", "optim.weight_decay=0.01", "optim.eps=1e-6"]
    out = run_local(
        _cfg(data8, tmp_path, "run.name=dst", f"checkpoint.init_from={ck}", *hp, steps=3), str(tmp_path / "dst")
    )
    assert out["status"] == "finished", out
    saved = json.loads((tmp_path / "dst" / "checkpoints" / "step_00000003" / "optimizer.json").read_text())
    source = json.loads((ck / "optimizer.json").read_text())
    # torch's load_state_dict had put the source run's settings (lr 0.003, betas 0.9/0.999, eps 1e-8) back
    assert max(g["base_lr"] for g in source["param_groups"]) == pytest.approx(0.003)
    assert max(g["base_lr"] for g in saved["param_groups"]) == pytest.approx(0.0005)
    assert all(list(g["betas"]) == [0.8, 0.95] and g["eps"] == 1e-6 for g in saved["param_groups"])
    assert source["state"] and saved["state"]  # the moment estimates came along and trained on


@pytest.mark.slow
def test_checkpoints_to_s3(ray_local, data8, tmp_path, s3_bucket, capsys):
    from ditcore.checkpoint import load_checkpoint
    from pipelines.infra import storage
    from pipelines.infra.code import training_code_fingerprint

    storage_s3 = f"checkpoint.storage={s3_bucket}/runs"
    cfg = _cfg(data8, tmp_path, "run.name=s3run", storage_s3, "mlflow.enabled=false", steps=2)
    # Trained by "other code": the driver's plan names it, and the worker records what the driver computed.
    other = "feedfacefeedface"
    out = run_training(cfg, plan=dataclasses.replace(resolve_run(cfg), code=other))
    assert out["status"] == "finished"
    ck = f"{s3_bucket}/runs/s3run/checkpoints/step_00000002"
    assert out["points"][0]["checkpoint"] == ck
    assert "checkpoint.json" in storage.listdir(ck) and "optimizer.safetensors" in storage.listdir(ck)
    local = storage.download_dir(ck, str(tmp_path / "dl"))
    loaded = load_checkpoint(local)
    assert loaded.state["step"] == 2

    # result.json and the checkpoint name the training code that ran. The same run asked for again by this code is
    # reused as it is (runs are matched by their settings), and the rerun says so, naming both fingerprints.
    result = storage.read_json(f"{s3_bucket}/runs/s3run/result.json")
    assert result["code"] == other and result["codes"] == [other] and out["codes"] == [other]
    assert storage.read_json(f"{ck}/state.json")["codes"] == [other]
    capsys.readouterr()
    again = run_training(cfg)
    assert again["status"] == "finished" and again["steps"] == 2 and again["code"] == other  # not trained again
    fingerprints = f"(fingerprint {other}; this code {training_code_fingerprint()})"
    assert f"s3run: already trained, trained in part or whole by other training code {fingerprints}" in (
        capsys.readouterr().out
    )
    capsys.readouterr()
    run_training(cfg, plan=dataclasses.replace(resolve_run(cfg), code=other))
    assert "other training code" not in capsys.readouterr().out  # the code that trained it
    # A run recorded before result.json named its code: unknown code, never taken for this code's. One trained on
    # another torch is said too: a record from before result.json listed its `software` names it in its `env`.
    old = {k: v for k, v in result.items() if k not in ("code", "codes", "software")}
    storage.write_json(f"{s3_bucket}/runs/s3run/result.json", {**old, "env": {**old["env"], "torch": "2.0.1"}})
    capsys.readouterr()
    assert run_training(cfg)["steps"] == 2
    said = capsys.readouterr().out
    assert f"(fingerprint unrecorded; this code {training_code_fingerprint()})" in said
    versions = f"(torch 2.0.1; here torch {torch.__version__})"
    assert f"s3run: already trained, trained in part or whole on other software {versions}" in said


def test_bad_config_errors_before_cluster_work(data8, tmp_path):
    good = _cfg(data8, tmp_path)
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        _cfg(data8, tmp_path, "optim.learning_rate=1")
    with pytest.raises(ConfigError, match="smaller than one training step"):
        resolve_run(_cfg(data8, tmp_path, "budget_flops=1000"), check_mlflow=False)
    with pytest.raises(ConfigError, match=r"model.in_channels=8 .*latent_channels=4"):
        resolve_run(_cfg(data8, tmp_path, "model.overrides.in_channels=8"), check_mlflow=False)
    with pytest.raises(ConfigError, match=r"model.text_dim=32 .*text.dim=16"):
        resolve_run(_cfg(data8, tmp_path, "model.adapt_to_data=false"), check_mlflow=False)
    with pytest.raises(ConfigError, match="class-conditional"):
        resolve_run(_cfg(data8, tmp_path, "model.preset=DiT-T/2"), check_mlflow=False)
    port = free_port()
    with pytest.raises(ConfigError, match="unreachable"):
        resolve_run(_cfg(data8, tmp_path, f"mlflow.tracking_uri=http://127.0.0.1:{port}"))
    with pytest.raises(ConfigError, match="not divisible"):
        resolve_run(_cfg(data8, tmp_path, "run.num_workers=3"), check_mlflow=False)
    # Numbers a run cannot use, NaN and inf included: each error names the key and the value.
    for override, message in (
        ("budget_flops=NaN", "budget_flops must be a finite number > 0, got nan"),
        ("budget_flops=inf", "budget_flops must be a finite number > 0, got inf"),
        ("optim.lr=-1", "optim.lr must be a finite number > 0, got -1.0"),
        ("optim.warmup_steps=-5", "optim.warmup_steps must be >= 0, got -5"),
        ("eval.num_samples=-5", "eval.num_samples must be >= 0"),
        ("eval.num_samples=2", "eval.num_samples must be >= 3"),
        (
            "checkpoint.keep=0",
            "checkpoint.keep must be >= 1 (the newest periodic checkpoint is what a restart resumes), got 0",
        ),
        ("run.max_failures=-2", "run.max_failures must be >= 0, or -1 for no limit, got -2"),
        ("run.num_threads=0", "run.num_threads must be >= 1"),
        ("mlflow.log_every=0", "mlflow.log_every must be >= 1, got 0"),
        # these failed only inside the Ray Train worker, or gave a negative MFU
        ("data.cond_dropout=5", "data.cond_dropout must be in [0, 1] (or null: the objective's), got 5.0"),
        ("data.cond_dropout=nan", "data.cond_dropout must be in [0, 1]"),
        ("run.peak_flops=-1", "run.peak_flops must be a finite FLOP/s > 0 (or null: measured), got -1.0"),
        ("run.peak_flops=0", "run.peak_flops must be a finite FLOP/s > 0"),
        ("eval.num_gpus=-1", "eval.num_gpus must be a finite number >= 0 (or null), got -1.0"),
        ("checkpoint.storage=gs://bucket/runs", "checkpoint.storage: 'gs://bucket/runs' has the scheme 'gs'"),
        ("run.name=..", "run.name: '..' must be one folder name"),  # the run went into storage's parent
        ("run.name=a/b", "run.name: 'a/b' must be one folder name"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve_run(_cfg(data8, tmp_path, override), check_mlflow=False)
    with pytest.raises(ConfigError, match=re.escape("eval.steps must be >= 1, got 0")):
        resolve_run(_cfg(data8, tmp_path, "eval.num_samples=16", "eval.steps=0"), check_mlflow=False)
    assert resolve_run(_cfg(data8, tmp_path, "run.max_failures=-1"), check_mlflow=False).cfg.run.max_failures == -1
    assert resolve_run(good, check_mlflow=False).total_steps >= 1
    # The CLI reports the error and exits 2 without starting Ray.
    assert (
        main(
            [
                f"data.manifest={data8}",
                "budget_flops=10",
                f"checkpoint.storage={tmp_path}",
                f"mlflow.tracking_uri=sqlite:///{tmp_path / 'x.db'}",
            ]
        )
        == 2
    )
    assert main([f"data.manifest={tmp_path / 'nope'}"]) == 2
    # A mistyped checkpoint.init_from failed inside the Ray Train worker ("not started"); now before any work.
    from jobs.cli.train import _run

    with pytest.raises(ConfigError, match=r"checkpoint.init_from: '.*nope' is not a checkpoint"):
        _run(_cfg(data8, tmp_path, f"checkpoint.init_from={tmp_path / 'nope'}"), validate_only=True)


def test_eval_fractions_add_learning_curve_points(data8, tmp_path):
    cfg = _cfg(data8, tmp_path)
    res = resolve_run(
        load_config(
            TrainConfig,
            None,
            [
                f"data.manifest={data8}",
                "data.batch_size=8",
                "data.val_samples=0",
                "model.preset=MMDiT-T",
                budget_override(cfg, 10),
                "eval.fractions=[0.5, 0.2]",
                f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}",
            ],
        ),
        check_mlflow=False,
    )
    budget = res.cfg.budget_flops
    assert res.point_steps == {10: budget, 5: pytest.approx(0.5 * budget), 2: pytest.approx(0.2 * budget)}
    with pytest.raises(ConfigError, match=r"eval.fractions\[0\]"):
        resolve_run(_cfg(data8, tmp_path, "eval.fractions=[1.5]"), check_mlflow=False)
    with pytest.raises(ConfigError, match=r"eval.fractions\[0\].*less than one training step"):
        resolve_run(_cfg(data8, tmp_path, budget_override(cfg, 10), "eval.fractions=[0.01]"), check_mlflow=False)


@pytest.mark.slow
def test_fsdp_two_workers_resume_matches_one_worker(ray_local, data8, tmp_path):
    """FSDP2 over 2 workers (gloo, CPU) with a worker killed mid-run: the resumed run (model, EMA and the
    sharded AdamW state restored) ends where one unsharded worker does with the same global batch."""
    from ditcore.checkpoint import read_optimizer_state

    out, ref = _resumed_and_reference(
        data8,
        tmp_path,
        '{"step": 3, "mode": "exit", "rank": 1}',
        "run.name=fsdp2",
        "run.fsdp=true",
        "run.num_workers=2",
        "run.cpus_per_worker=1",
    )
    run_dir = Path(out["run_dir"])
    a_dir, b_dir = run_dir / "checkpoints" / "step_00000006", tmp_path / "local" / "checkpoints" / "step_00000006"
    for name in ("model", "ema"):
        a, b = load_file(str(a_dir / f"{name}.safetensors")), load_file(str(b_dir / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=f"{name} {k} differs")
    # The optimizer state is written unsharded in the same layout as a DDP run's, and matches it.
    oa, ob = read_optimizer_state(a_dir), read_optimizer_state(b_dir)
    assert oa["state"].keys() == ob["state"].keys() and len(oa["param_groups"]) == len(ob["param_groups"])
    for i, st in ob["state"].items():
        assert float(oa["state"][i]["step"]) == float(st["step"]) == 6.0
        # Both AdamW moments: the first (exp_avg) and the second (exp_avg_sq).
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(oa["state"][i][moment], st[moment], atol=1e-9, rtol=1e-4, msg=f"{moment} {i}")
    for moment in ("exp_avg", "exp_avg_sq"):  # the comparison is not of zeros: most parameters have moved moments
        moved = [bool(st[moment].abs().sum() > 0) for st in ob["state"].values()]
        assert sum(moved) > len(moved) // 2, (moment, sum(moved), len(moved))
    assert ref["steps"] == 6


@pytest.mark.slow
def test_runs_share_one_trainer_and_resume_inside_the_second(ray_local, data8, tmp_path):
    """Two runs trained by one TorchTrainer, one after the other (how a sweep trial trains its budgets); a worker
    killed in the second run: after the restart the first run is skipped (its result is kept) and the second
    resumes from its own checkpoint, ending exactly where an uninterrupted run does."""
    from jobs.train.driver import finish_run, prepare_run, train_runs

    group = tmp_path / "group"
    cfg = _cfg(data8, tmp_path)
    common = [f"checkpoint.storage={group}", "checkpoint.every_n_steps=2", "run.max_failures=1"]
    first = prepare_run(resolve_run(_cfg(data8, tmp_path, budget_override(cfg, 2), "run.name=first", *common)))
    second = prepare_run(
        resolve_run(
            _cfg(
                data8,
                tmp_path,
                budget_override(cfg, 6),
                "run.name=second",
                *common,
                'debug.inject_failure={"step": 3, "mode": "exit"}',
            )
        )
    )
    train_runs([first, second], str(group))
    a, b = finish_run(first, evaluate=False), finish_run(second, evaluate=False)
    assert (a["status"], a["steps"], b["status"], b["steps"]) == ("finished", 2, "finished", 6)
    assert b["last_checkpoint"] == str(group / "second" / "checkpoints" / "step_00000006")
    assert (group / "second" / "_injected_failure_step3").exists()  # the worker died inside the second run
    # One Ray Train run for both: its snapshot and worker records sit in the group directory, not in the runs'.
    assert (group / "workers" / "rank0.json").exists() and not (group / "first" / "workers").exists()
    ref = run_local(_cfg(data8, tmp_path, budget_override(cfg, 6), "run.name=ref"), str(tmp_path / "local"))
    got = _weights(group / "second" / "checkpoints" / "step_00000006")
    want = _weights(tmp_path / "local" / "checkpoints" / "step_00000006")
    assert ref["steps"] == 6 and all(torch.equal(got[k], want[k]) for k in want)
    # A second call finds both results and trains nothing (a restarted sweep driver).
    before = (group / "first" / "result.json").read_text()
    train_runs([first, second], str(group))
    assert (group / "first" / "result.json").read_text() == before


def test_flip_is_the_probability_of_training_on_the_mirror(tmp_path):
    # Mirrored latents are NaN here: a run that draws one gets a non-finite loss and fails.
    data = make_latent_dataset(tmp_path / "lat", n=8, num_classes=None, text=(8, 16, 16), mirror_nan=True)
    for mode in ("run.deterministic=true", "run.deterministic=false"):
        kept = run_local(_cfg(data, tmp_path, mode, "data.flip=0", steps=3), str(tmp_path / "never"))
        assert kept["status"] == "finished" and kept["steps"] == 3
        mirrored = run_local(_cfg(data, tmp_path, mode, "data.flip=1", steps=3), str(tmp_path / "always"))
        assert mirrored["status"] == "failed" and "non-finite loss" in mirrored["reason"]
    with pytest.raises(ConfigError, match=r"data.flip must be a probability in \[0, 1\], got 1.5"):
        resolve_run(_cfg(data, tmp_path, "data.flip=1.5"), check_mlflow=False)


def test_flip_warns_when_captions_name_a_side(tmp_path):
    from jobs.train.plan import attach_worker_data

    captions = ["a red circle in the center", "a small blue square at the top left"] * 4
    data = make_latent_dataset(tmp_path / "lat", n=8, num_classes=None, text=(8, 16, 16), captions=captions)
    with pytest.warns(UserWarning, match=r"data.flip=0.5 .*'a small blue square at the top left'.*data.flip=0"):
        attach_worker_data(
            resolve_run(_cfg(data, tmp_path, "data.val_samples=4", "data.batch_size=4"), check_mlflow=False)
        )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = _cfg(data, tmp_path, "data.val_samples=4", "data.batch_size=4", "data.flip=0")
        attach_worker_data(resolve_run(cfg, check_mlflow=False))


def test_runs_with_and_without_mirroring_have_different_names(tmp_path):
    from jobs.train.config import config_hash

    cfg = _cfg("m", tmp_path)
    assert cfg.data.flip == 0.5  # DiT's augmentation stays the default
    assert config_hash(cfg) != config_hash(_cfg("m", tmp_path, "data.flip=0"))


def test_without_ema_the_ema_is_the_weights_and_reports_their_validation_loss(tmp_path):
    """optim.ema_decay 0: the EMA saved with a checkpoint is exactly the weights, and its validation loss is theirs
    (not computed twice); with a decay the EMA's loss is its own."""
    data = make_latent_dataset(tmp_path / "lat", n=24, num_classes=None, text=(8, 16, 16))
    metrics = {}
    for decay in (0.0, 0.5):
        run = tmp_path / f"decay{decay}"
        out = run_local(_cfg(data, tmp_path, f"optim.ema_decay={decay}", "data.val_samples=8", steps=4), str(run))
        assert out["status"] == "finished"
        ckpt = run / "checkpoints" / "step_00000004"
        model, ema = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "ema.safetensors"))
        assert model.keys() == ema.keys()
        assert all(torch.equal(model[k], ema[k]) for k in model) == (decay == 0.0)
        metrics[decay] = json.loads((ckpt / "state.json").read_text())["metrics"]
    assert metrics[0.0]["val_loss_ema"] == metrics[0.0]["val_loss"] > 0
    assert metrics[0.5]["val_loss_ema"] != metrics[0.5]["val_loss"]


def test_a_wsd_branch_start_checkpoint_is_kept_without_a_validation_loss(tmp_path):
    """A checkpoint kept only for a WSD branch to start from (an undecayed model, no point) skips the validation
    loss; the run's budget point and a periodic checkpoint still have theirs."""
    data = make_latent_dataset(tmp_path / "lat", n=24, num_classes=None, text=(8, 16, 16))
    cfg = _cfg(data, tmp_path, "data.val_samples=8", "checkpoint.every_n_steps=3", steps=6)
    plan = resolve_run(cfg, check_mlflow=False)
    plan.branch_steps = (2, 3)  # step 3 is also a periodic checkpoint
    out = run_local(cfg, str(tmp_path / "run"), plan=plan)
    assert out["status"] == "finished"

    def metrics(step: int) -> dict:
        state = tmp_path / "run" / "checkpoints" / f"step_{step:08d}" / "state.json"
        return json.loads(state.read_text())["metrics"]

    assert "val_loss" not in metrics(2) and metrics(2)["loss"] > 0  # kept (a branch starts there), not validated
    assert metrics(3)["val_loss"] > 0 and metrics(6)["val_loss"] > 0
