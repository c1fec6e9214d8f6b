"""A rerun of `ditscale train` under a run name resumes what that run was, or is refused: it resumes after Ray's
checkpoint list names periodic checkpoints `checkpoint.keep` pruned (the shipped keep=2 could not resume) and skips a
damaged newest checkpoint; other settings under the same name are refused; a run whose training raised is FAILED in
MLflow with the reason and trained again by the next invocation; data too small for a batch is a config error."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ditcore.config import ConfigError
from jobs.train.driver import RAY_SNAPSHOT, run_local, run_training
from jobs.train.plan import resolve_run
from pipelines.infra.code import software_versions, training_code_fingerprint
from tests.jobs._train_helpers import TINY_OPTIM, config_maker

_cfg = config_maker("mlflow.experiment=test-rerun", *TINY_OPTIM, "run.deterministic=true", "mlflow.log_every=1")


def _status(tmp: Path, run_id: str) -> tuple[str, dict]:
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}").get_run(run_id)
    return run.info.status, run.data.tags


@pytest.mark.slow
def test_a_killed_run_resumes_past_pruned_and_damaged_checkpoints_to_the_same_weights(ray_local, data8, tmp_path):
    periodic = ("checkpoint.every_n_steps=1", "checkpoint.keep=2", "run.name=kept2")
    out = run_training(_cfg(data8, tmp_path, *periodic, steps=6))
    assert out["status"] == "finished"
    run_dir = Path(out["run_dir"])
    assert (run_dir / RAY_SNAPSHOT).exists()  # Ray's list names step_1..6; keep=2 pruned steps 1-3
    # The state a driver killed after step 5 leaves: no result, no step 6. And step 5 damaged (truncated weights).
    (run_dir / "result.json").unlink()
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")
    weights = run_dir / "checkpoints" / "step_00000005" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    again = run_training(_cfg(data8, tmp_path, *periodic, steps=6))
    assert again["status"] == "finished" and again["steps"] == 6, again
    ref = run_local(_cfg(data8, tmp_path, "run.name=ref", steps=6), str(tmp_path / "local"))
    a = load_file(str(run_dir / "checkpoints" / "step_00000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "local" / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert ref["steps"] == 6 and all(torch.equal(a[k], b[k]) for k in a)  # resumed from step 4: the same weights
    assert _status(tmp_path, again["mlflow_run_id"])[0] == "FINISHED"

    # Other settings under the same run name are refused before anything is touched.
    with pytest.raises(ConfigError, match=r"run 'kept2' .* other settings \(optim\.lr: 0\.003 -> 0\.0001"):
        run_training(_cfg(data8, tmp_path, *periodic, "optim.lr=0.0001", steps=6))
    assert _status(tmp_path, again["mlflow_run_id"])[0] == "FINISHED"


@pytest.mark.slow
def test_a_run_whose_training_raises_is_failed_in_mlflow_and_trained_again_next_time(
    ray_local, data8, tmp_path, capsys
):
    fail = ('debug.inject_failure={"step": 2, "mode": "raise"}', "run.max_failures=0")
    base = ("checkpoint.every_n_steps=1", "run.name=raises")
    # The first attempt runs "older" training code (its plan's fingerprint): the run it resumes says so.
    cfg = _cfg(data8, tmp_path, *base, *fail, steps=4)
    out = run_training(cfg, plan=dataclasses.replace(resolve_run(cfg), code="0ld0ld0ld0ld0ld0"))
    assert out["status"] == "failed" and "injected failure at step 2" in out["reason"], out
    status, tags = _status(tmp_path, out["mlflow_run_id"])
    assert status == "FAILED" and "injected failure" in tags["ditscale.failure_reason"]
    # ... and on an older torch: its checkpoints' state.json say so.
    old = {**software_versions(), "torch": "2.0.1"}
    states = list(Path(out["run_dir"]).glob("checkpoints/step_*/state.json"))
    assert states and all(json.loads(f.read_text())["software"] == [software_versions()] for f in states)
    for f in states:  # rewritten, with its new size in the checkpoint's manifest (else it counts as damaged)
        f.write_text(json.dumps({**json.loads(f.read_text()), "software": [old]}))
        manifest = json.loads((f.parent / "checkpoint.json").read_text())
        manifest["files"]["state.json"] = f.stat().st_size
        (f.parent / "checkpoint.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    again = run_training(_cfg(data8, tmp_path, *base, steps=4))  # the injection is not part of the run's settings
    assert again["status"] == "finished" and again["steps"] == 4
    assert _status(tmp_path, again["mlflow_run_id"])[0] == "FINISHED"
    # Resumed from the old code's checkpoint at step 2: both codes trained it, and the rerun says so.
    code = training_code_fingerprint()
    assert again["code"] == code and again["codes"] == ["0ld0ld0ld0ld0ld0", code]
    said = capsys.readouterr().out
    assert "raises: resumed or started from a checkpoint, trained in part or whole by other training code" in said
    assert f"(fingerprint 0ld0ld0ld0ld0ld0; this code {code})" in said
    # Both torches trained it: result.json lists them, and the rerun says so once (nothing was said before training).
    assert again["software"] == [old, software_versions()], again["software"]
    assert json.loads((Path(again["run_dir"]) / "result.json").read_text())["software"] == again["software"]
    other = "raises: resumed or started from a checkpoint, trained in part or whole on other software (torch 2.0.1; "
    assert said.count(f"{other}here torch {torch.__version__})") == 1, said
    assert "already trained" not in said


def test_a_data_set_too_small_for_its_batch_is_a_config_error(data8, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.batch_size: 16 is more than the 8 training rows"):
        resolve_run(_cfg(data8, tmp_path, "data.batch_size=16", "data.val_samples=0"))
    with pytest.raises(ConfigError, match=r"data\.val_samples: 8 rows held out .* none of the 8"):
        resolve_run(_cfg(data8, tmp_path, "data.val_samples=8"))
    with pytest.raises(ConfigError, match=r"checkpoint\.keep"):
        resolve_run(_cfg(data8, tmp_path, "checkpoint.keep=0"))


def test_a_warmup_longer_than_the_run_is_a_warning_with_the_peak_learning_rate(data8, tmp_path):
    with pytest.warns(UserWarning, match=r"warmup_steps=100 is not below the run's 4 steps: .* peaks at 4% of optim"):
        resolve_run(_cfg(data8, tmp_path, "optim.warmup_steps=100", steps=4), check_mlflow=False)


def _checkpoint(root, step: int, manifest: bool = True) -> Path:
    """A step directory with one file and (unless `manifest` is False: torn) its checkpoint.json listing it."""
    d = root / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights")
    if manifest:
        (d / "checkpoint.json").write_text(json.dumps({"format_version": 1, "files": {"model.safetensors": 7}}))
    return d


@pytest.mark.parametrize("keep", [1, 2])
def test_pruning_counts_intact_checkpoints_only_and_never_the_one_just_written(tmp_path, keep):
    """A torn step directory (an S3 upload killed before its checkpoint.json), or one whose checkpoint.json lists a
    file that is truncated, at a later step than the ones saved after a resume with another cadence, held a keep
    slot: with keep=1 the checkpoint just written was deleted; with keep=2 the last intact one before it."""
    import pyarrow.fs as pafs

    from jobs.train.checkpointing import prune

    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        _checkpoint(root, step)
    _checkpoint(root, 100, manifest=False)  # torn
    (_checkpoint(root, 200) / "model.safetensors").write_bytes(b"wei")  # damaged: truncated
    (_checkpoint(root, 300) / "checkpoint.json").write_text("[1, 2]")  # damaged: not a manifest
    _checkpoint(root, 5, manifest=False)  # a budget point: always kept
    prune(pafs.LocalFileSystem(), str(root / "step_00000030"), keep, keep_steps={5})
    left = sorted(p.name for p in root.iterdir())
    assert left == ["step_00000005", *(["step_00000020"] if keep == 2 else []), "step_00000030"], left


def test_pruning_leaves_a_checkpoint_it_cannot_read_now(tmp_path):
    """An OSError reading a checkpoint's manifest (S3 throttled) is not damage: that checkpoint is neither deleted
    nor counted, and the intact ones are pruned as if it were not there."""

    from jobs.train.checkpointing import prune

    root = tmp_path / "checkpoints"
    for step in (10, 20, 30, 40):
        _checkpoint(root, step)
    prune(_flaky("step_00000040", failures=10), str(root / "step_00000030"), 2, keep_steps=set())
    assert sorted(p.name for p in root.iterdir()) == ["step_00000020", "step_00000030", "step_00000040"]


def _flaky(needle: str, failures: int):
    """A local filesystem whose reads of paths containing `needle` raise OSError (S3 throttling) `failures` times."""
    import pyarrow.fs as pafs

    left = [failures]

    class Flaky(pafs.LocalFileSystem):
        def open_input_stream(self, path, *args, **kwargs):
            if needle in path and left[0] > 0:
                left[0] -= 1
                raise OSError("SlowDown: please reduce your request rate")
            return super().open_input_stream(path, *args, **kwargs)

    return Flaky()


def test_resume_reads_a_checkpoint_again_after_a_storage_error_and_skips_one_it_cannot_read(tmp_path, caplog):
    """One throttled read of the newest checkpoint's manifest sent the resume back to an older checkpoint (its steps
    trained again); it is read again. A checkpoint storage never reads is skipped with a warning naming why."""
    from jobs.train.env import _intact

    path = str(_checkpoint(tmp_path, 40))
    assert _intact(_flaky("step_00000040", failures=1), path)
    assert not _intact(_flaky("step_00000040", failures=10), path)
    assert "storage cannot read it: SlowDown" in caplog.text


def test_a_remote_re_save_of_a_step_uploads_into_an_emptied_directory_and_never_lists_its_manifest(tmp_path):
    """A step saved again (a resume from an earlier checkpoint) was uploaded under the old save's checkpoint.json: a
    kill mid-upload left old and new files mixed under a manifest that passed, and a sharded save listed that old
    checkpoint.json (at its old size) in the new manifest, so the checkpoint read as damaged for good. The local
    filesystem stands in for S3 here (the remote branch is taken by the flag)."""
    import pyarrow.fs as pafs

    from jobs.train.checkpointing import _commit, checkpoint_problem, upload_committed

    fs = pafs.LocalFileSystem()
    new = _checkpoint(tmp_path / "new", 7)
    for commit in ("upload", "sharded"):
        old = _checkpoint(tmp_path / commit, 7)
        (old / "checkpoint.json").write_text(json.dumps({"files": {"model.safetensors": 7, "stale.bin": 3}}) + " " * 9)
        (old / "stale.bin").write_bytes(b"old")
        if commit == "upload":
            upload_committed(new, fs, str(old))
        else:  # the ranks uploaded their files into the step directory; rank 0 commits
            (old / "stale.bin").unlink()
            _commit(new, fs, str(old), local=False)
        manifest = json.loads((old / "checkpoint.json").read_text())
        assert sorted(manifest["files"]) == ["model.safetensors"], (commit, manifest)
        assert sorted(p.name for p in old.iterdir()) == ["checkpoint.json", "model.safetensors"], commit
        assert checkpoint_problem(fs, str(old)) is None


def test_a_manifest_listing_itself_reads_as_intact(tmp_path):
    """Sharded checkpoints re-saved on S3 before the fix above list checkpoint.json in their own manifest, at a size
    it can never have again: those checkpoints are restorable, not damaged."""
    import pyarrow.fs as pafs

    from jobs.train.checkpointing import checkpoint_problem

    d = _checkpoint(tmp_path, 9)
    (d / "checkpoint.json").write_text(json.dumps({"files": {"model.safetensors": 7, "checkpoint.json": 1}}))
    assert checkpoint_problem(pafs.LocalFileSystem(), str(d)) is None
    (d / "model.safetensors").write_bytes(b"w")
    assert "model.safetensors: size 1 bytes, expected 7" in checkpoint_problem(pafs.LocalFileSystem(), str(d))


def test_a_torn_fit_start_marker_reads_as_absent_and_is_rewritten_whole(tmp_path):
    """A worker killed while writing .fit-<id>.json left it empty: every replacement worker group then failed on
    its JSON until max_failures was spent. (The environment is built without a Ray Train context: only its storage
    and rank matter here.)"""
    import types

    import pyarrow.fs as pafs

    from jobs.train.env import RayTrainEnv

    env = RayTrainEnv.__new__(RayTrainEnv)
    env.fit_id, env.rank, env._base = "f1", 0, str(tmp_path / "run")
    env._storage = types.SimpleNamespace(storage_filesystem=pafs.LocalFileSystem())
    assert env.fit_start_step(4) == 4  # the first group writes the marker
    assert json.loads((tmp_path / "run" / ".fit-f1.json").read_text()) == {"step": 4}
    assert env.fit_start_step(6) == 4  # a replacement group, restored at step 6, counts from 4
    (tmp_path / "run" / ".fit-f1.json").write_text("")  # torn
    assert env.fit_start_step(6) == 6
    assert json.loads((tmp_path / "run" / ".fit-f1.json").read_text()) == {"step": 6}
    assert not list((tmp_path / "run").glob("*.tmp"))

    # A marker that cannot be read now (S3 throttled, a network error) is not torn: the error raises (Ray Train
    # restarts the group, which reads it again); it was taken for torn and overwritten, losing the earlier steps.
    class Unreadable:
        def __init__(self, fs, failures):
            self.fs, self.failures = fs, failures

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def open_input_stream(self, path):
            if self.failures > 0:
                self.failures -= 1
                raise OSError("SlowDown: please reduce your request rate")
            return self.fs.open_input_stream(path)

    env._storage = types.SimpleNamespace(storage_filesystem=Unreadable(pafs.LocalFileSystem(), 1))
    assert env.fit_start_step(8) == 6  # one failed read is tried again
    env._storage = types.SimpleNamespace(storage_filesystem=Unreadable(pafs.LocalFileSystem(), 10))
    with pytest.raises(OSError, match="SlowDown"):
        env.fit_start_step(8)
    assert json.loads((tmp_path / "run" / ".fit-f1.json").read_text()) == {"step": 6}


def test_a_remote_restore_download_is_deleted_when_the_worker_moves_on(tmp_path, s3_bucket, monkeypatch):
    """A worker restored from an s3:// checkpoint downloaded it into a temp folder that was never removed: a worker
    group training a sweep trial's runs one after another kept one full copy (optimizer state too) per run. (The
    environment is built without a Ray Train context: only its storage matters here.)"""
    import tempfile
    import types

    from jobs.train.env import RayTrainEnv
    from pipelines.infra import storage
    from tests.serve._helpers import class_checkpoint

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    storage.upload_dir(class_checkpoint(tmp_path), f"{s3_bucket}/exp/run1/checkpoints/step_00000002")
    env = RayTrainEnv.__new__(RayTrainEnv)
    env._storage = types.SimpleNamespace(
        experiment_fs_path=f"{s3_bucket.removeprefix('s3://')}/exp", storage_filesystem=storage.s3_filesystem()
    )
    env._train = types.SimpleNamespace(get_checkpoint=lambda: None)  # Ray registered none: the newest on storage
    env._restore_download = None
    env.set_run("run1")
    restored = env.restore_dir()
    assert Path(restored, "config.json").is_file() and Path(restored).parent == temp
    assert env.restore_dir() == restored  # one download per run
    env.set_run("run2")  # the next run of the worker group
    assert not Path(restored).exists() and list(temp.glob("ditscale-*")) == []
    assert env.restore_dir() is None


def test_a_resaved_sharded_step_commits_beside_a_leftover_of_an_earlier_kill(tmp_path):
    """The old step directory is moved aside before the new one goes in. Its aside name held only the pid, so the
    leftover of a kill before the clean-up made a later re-save by a process with the same pid (in containers, pids
    repeat) fail on the rename, and the training with it."""
    import os

    import pyarrow.fs as pafs

    from jobs.train.checkpointing import _commit

    path = tmp_path / "step_00000004"
    path.mkdir()
    (path / "model.safetensors").write_text("old")
    leftover = tmp_path / f".step_00000004.old-{os.getpid()}"
    leftover.mkdir()
    (leftover / "model.safetensors").write_text("older")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "model.safetensors").write_text("new")
    _commit(stage, pafs.LocalFileSystem(), str(path), local=True)
    assert (path / "model.safetensors").read_text() == "new" and (path / "checkpoint.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [leftover.name, "step_00000004"]
