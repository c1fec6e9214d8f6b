"""Where a training loop runs: in-process over numpy rows (`LocalEnv`) or as a Ray Train worker (`RayTrainEnv`).

An environment says which device to use, wraps the model for data parallelism, yields batches, says where
checkpoints go and reports metrics; the loop (jobs/train/loop.py) is the same torch code in both. `RayTrainEnv` is
the only place the loop touches Ray Train (get_context, prepare_model, get_dataset_shard, report, get_checkpoint)
and the object store (the driver loader's rows).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from jobs.train.data import epoch_seed, run_epoch_batches

RESULT_NAME = "result.json"  # <run dir>/result.json: how a training run ended (written by rank 0 at its end)


@dataclass
class LocalEnv:
    """In-process single-worker environment over in-memory numpy rows (no Ray)."""

    rows: dict[str, np.ndarray]
    checkpoint_root: str  # local directory; checkpoints go to <root>/checkpoints/step_XXXXXXXX
    resume_from: Optional[str] = None
    reports: list = field(default_factory=list)
    rank: int = 0
    world_size: int = 1

    def device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def wrap_model(self, model: nn.Module, fsdp: bool, mixed_precision: str = "none") -> nn.Module:
        return model

    def batches(self, local_batch: int, epoch: int, seed: int, shuffle_buffer: int) -> Iterator[dict]:
        """One epoch of batches; `seed`: the run's seed."""
        yield from run_epoch_batches(self.rows, local_batch, epoch, seed, shuffle_buffer)

    def checkpoint_location(self, step: int) -> tuple[Any, str]:
        import pyarrow.fs as pafs

        root = os.path.abspath(self.checkpoint_root)
        return pafs.LocalFileSystem(), os.path.join(root, "checkpoints", f"step_{step:08d}")

    def report(self, metrics: dict, checkpoint_path: Optional[str]) -> None:
        self.reports.append((dict(metrics), checkpoint_path))

    def restore_dir(self) -> Optional[str]:
        return self.resume_from

    def fit_start_step(self, step: int) -> int:
        """One process, no worker restarts: the step it starts at."""
        return step

    def write_result(self, record: dict) -> None:
        os.makedirs(self.checkpoint_root, exist_ok=True)
        with open(os.path.join(self.checkpoint_root, RESULT_NAME), "w") as f:
            json.dump(record, f)

    def barrier(self) -> None:
        pass


class RayTrainEnv:
    """The Ray Train environment: the only place the loop touches Ray.

    One TorchTrainer may train several runs in sequence (a sweep trial's budgets): `set_run(subdir)` points
    checkpoints and the result record at <experiment dir>/<subdir>, the run's own directory (Ray Train keeps
    reported checkpoints inside its experiment directory).
    """

    def __init__(self, rows: Any = None, fit_id: str = "") -> None:
        """`rows`: an object ref of the training rows (dict of numpy arrays: the driver loader), mapped zero-copy
        from the object store; None: batches come from this worker's shard of the Ray Dataset "train".
        `fit_id`: names this TorchTrainer.fit, the same for the worker groups that replace failed ones
        (`fit_start_step`); "" when the caller gives none."""
        import ray
        import ray.train

        self.rows: Optional[dict[str, np.ndarray]] = ray.get(rows) if rows is not None else None  # RAY
        self.fit_id = fit_id

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self._storage = ctx.get_storage()
        self._restore: Optional[tuple[Optional[str]]] = None  # cached restore_dir() of the current run
        self._restore_download: Optional[str] = None  # the temp folder a remote restore_dir() was downloaded to
        self._base = self._storage.experiment_fs_path.rstrip("/")  # the current run's directory
        self._record_placement()

    @property
    def fs(self) -> Any:
        return self._storage.storage_filesystem

    def set_run(self, subdir: str) -> None:
        """Write the next run's checkpoints and result to <experiment dir>/<subdir> ("" : the experiment dir)."""
        self._base = "/".join(x for x in (self._storage.experiment_fs_path.rstrip("/"), subdir.strip("/")) if x)
        self.release_restore()

    def release_restore(self) -> None:
        """Forget the current run's restore_dir(), deleting it when it was a download from remote storage (the
        trainer has read it by then): one worker restoring run after run filled its temp folder otherwise."""
        if self._restore_download is not None:
            shutil.rmtree(self._restore_download, ignore_errors=True)
        self._restore, self._restore_download = None, None

    def run_finished(self) -> bool:
        """Did the current run already write its result (before a worker or driver restart)?"""
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self._base}/{RESULT_NAME}").type != pafs.FileType.NotFound

    def _record_placement(self) -> None:
        """<experiment>/workers/rank<r>.json: node id, host, pid of this worker (placement diagnostics)."""
        import ray

        fs, base = self.fs, self._storage.experiment_fs_path.rstrip("/")
        rec = {
            "rank": self.rank,
            "world_size": self.world_size,
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
        }
        try:
            fs.create_dir(f"{base}/workers", recursive=True)
            with fs.open_output_stream(f"{base}/workers/rank{self.rank}.json") as f:
                f.write(json.dumps(rec).encode())
        except OSError:
            pass  # diagnostics only

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()  # RAY: the worker's assigned device

    def wrap_model(self, model: nn.Module, fsdp: bool, mixed_precision: str = "none") -> nn.Module:
        if fsdp:
            from jobs.train.parallel import fully_shard_blocks

            return fully_shard_blocks(model, mixed_precision)
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)  # RAY: DDP wrap (no-op for 1 worker)

    def batches(self, local_batch: int, epoch: int, seed: int, shuffle_buffer: int) -> Iterator[dict]:
        """This worker's batches of one epoch; `seed`: the run's seed."""
        if self.rows is not None:  # one permutation per epoch, the same on every worker; rank r takes its slice
            yield from run_epoch_batches(
                self.rows, local_batch, epoch, seed, shuffle_buffer, self.rank, self.world_size
            )
            return
        shard = self._train.get_dataset_shard("train")  # RAY: this worker's streaming split of the dataset
        kwargs: dict[str, Any] = {}
        if shuffle_buffer > 0:
            local_seed = epoch_seed(seed, epoch, self.rank)  # each worker's buffer shuffles its own rows
            kwargs = {"local_shuffle_buffer_size": shuffle_buffer, "local_shuffle_seed": local_seed}
        yield from shard.iter_batches(batch_size=local_batch, batch_format="numpy", drop_last=True, **kwargs)

    def checkpoint_location(self, step: int) -> tuple[Any, str]:
        return self.fs, f"{self._base}/checkpoints/step_{step:08d}"

    def report(self, metrics: dict, checkpoint_path: Optional[str]) -> None:
        from ray.train import Checkpoint, CheckpointUploadMode

        ckpt = Checkpoint(path=checkpoint_path, filesystem=self.fs) if checkpoint_path else None
        # RAY: register metrics (+ the already-persisted checkpoint, so no second upload) with the controller.
        self._train.report(metrics, checkpoint=ckpt, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

    def restore_dir(self) -> Optional[str]:
        """Local directory of the current run's latest checkpoint after a worker/driver restart, else None."""
        if self._restore is None:
            self._restore = (self._find_restore(),)
        return self._restore[0]

    def _find_restore(self) -> Optional[str]:
        import pyarrow.fs as pafs
        from ray.train import Checkpoint

        ckpt = self._train.get_checkpoint()  # RAY: latest checkpoint after a worker/driver restart
        if ckpt is not None and not ckpt.path.startswith(f"{self._base}/checkpoints/"):
            ckpt = None  # the last checkpoint of an earlier run of this trainer: not this run's
        # A checkpoint is written (complete) before it is reported, and the controller registers reports
        # asynchronously: a worker that dies right after writing one leaves it on storage but not in Ray's list.
        # Resume from the newer of the two so those steps are not trained again.
        newest = self._newest_complete_checkpoint()
        if ckpt is not None and not _intact(self.fs, ckpt.path):
            ckpt = None  # Ray's latest is truncated or damaged: the newest intact one on storage instead
        if newest is not None and (ckpt is None or newest[0] > _registered_step(ckpt.path)):
            ckpt = Checkpoint(path=newest[1], filesystem=self.fs)
        if ckpt is None:
            return None
        if isinstance(ckpt.filesystem, pafs.LocalFileSystem):
            return ckpt.path
        tmp = self._restore_download = tempfile.mkdtemp(prefix="ditscale-restore-")
        ckpt.to_directory(tmp)
        return tmp

    def _newest_complete_checkpoint(self) -> Optional[tuple[int, str]]:
        """(step, path) of this run's newest intact checkpoint on storage: its checkpoint.json (written last) lists
        every file with its size, and each is there with that size. A damaged newest one is skipped, with a
        warning, for the one before."""
        from jobs.train.checkpointing import step_dirs

        for step, path in sorted(step_dirs(self.fs, f"{self._base}/checkpoints").items(), reverse=True):
            if _intact(self.fs, path):
                return step, path
        return None

    def _fit_marker(self) -> str:
        return f"{self._base}/.fit-{self.fit_id}.json"

    def fit_start_step(self, step: int) -> int:
        """The step the current run stood at when this fit first started it: `step` in its first worker group; in
        one that Ray Train started after a worker failure, the step its first group started at (read from
        <run dir>/.fit-<fit_id>.json, which the first writes). So the run's `flops_run` counts the steps this fit
        trained and kept before the failure too, not only those since the restore. Rank 0 (the result's writer)
        reads and writes the marker; the other ranks, and a fit without an id, get `step`."""
        import pyarrow.fs as pafs

        if not self.fit_id or self.rank != 0:
            return step
        marker = self._fit_marker()
        if self.fs.get_file_info(marker).type != pafs.FileType.NotFound:
            from pipelines.infra.tracking import retry

            def read() -> int:
                with self.fs.open_input_stream(marker) as f:
                    return int(json.loads(f.read().decode())["step"])

            try:  # an OSError (S3 throttled, a network error) is tried again, then raises
                return min(step, retry(read, attempts=3, what="fit-start marker", giveup=_not_os_error))
            except (ValueError, KeyError, TypeError):
                pass  # torn by a kill mid-write (written atomically since): counted from here, written again
        self.fs.create_dir(self._base, recursive=True)
        tmp = f"{marker}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps({"step": step}).encode())
        self.fs.move(tmp, marker)
        return step

    def write_result(self, record: dict) -> None:
        """<run dir>/result.json: how the run ended (read by the driver; marks the run done on a restart). The
        fits' start markers (`fit_start_step`) go with it: a run with a result is not trained again in any fit."""
        self.fs.create_dir(self._base, recursive=True)
        tmp = f"{self._base}/.{RESULT_NAME}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(record).encode())
        self.fs.move(tmp, f"{self._base}/{RESULT_NAME}")
        import pyarrow.fs as pafs

        # This fit's marker, and any an interrupted earlier fit left (its driver killed): none is read again.
        for info in self.fs.get_file_info(pafs.FileSelector(self._base)):
            name = info.path.rsplit("/", 1)[-1]
            if name.startswith(".fit-") and name.endswith(".json"):
                try:
                    self.fs.delete_file(info.path)
                except OSError:
                    pass  # already gone

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()


def _intact(fs: Any, path: str) -> bool:
    """Whether the checkpoint at `path` has its checkpoint.json and every file it lists, at the listed size. A
    damaged one, or one storage still fails to read after 3 tries (an OSError), is skipped with a warning."""
    import logging

    from jobs.train.checkpointing import checkpoint_problem
    from pipelines.infra.tracking import retry

    try:
        problem = retry(lambda: checkpoint_problem(fs, path), attempts=3, what="checkpoint", giveup=_not_os_error)
    except OSError as exc:
        problem = f"storage cannot read it: {exc}"
    if problem:
        logging.getLogger(__name__).warning("checkpoint %s cannot be restored (%s); skipping it", path, problem)
    return problem is None


def _registered_step(path: str) -> int:
    """The step of a checkpoint path Ray registered (this run's <base>/checkpoints/step_XXXXXXXX)."""
    from ditcore.checkpoint import STEP_DIR_RE

    m = STEP_DIR_RE.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else -1


def _not_os_error(exc: Exception) -> bool:
    return not isinstance(exc, OSError)
