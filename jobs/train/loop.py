"""The per-worker training loop: an ordinary torch loop plus a few marked Ray calls.

`train_loop_per_worker(config)` is what Ray Train's TorchTrainer runs on every worker. All Ray calls go
through `RayEnv` (prepare_model, get_dataset_shard, report, get_checkpoint); `LocalEnv` runs the identical
loop in-process on numpy batches (the no-Ray baseline of bench/train_throughput.py, and a fast test path).

Per step: latent = mean + std * eps with the horizontal flip chosen at train time, scaled to model space
((z - shift) * scale); CFG dropout and the diffusion loss from ditcore.objectives; AdamW with warmup and a
constant / cosine / WSD schedule; gradient clipping; EMA. The run stops after
ceil(budget_flops / (train_flops_per_image * global_batch)) steps. Checkpoints hold model, EMA, optimizer,
LR-schedule position, RNG scheme and data position, so a resumed run continues bit-for-bit (deterministic mode)
or at least without a jump in the loss curve.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from ditcore import objectives
from ditcore.checkpoint import load_model_weights, load_optimizer_state, read_optimizer_state, save_checkpoint
from ditcore.config import from_dict
from ditcore.models import build_model, config_from_dict
from jobs.train.config import TrainConfig, lr_factor

# Peak dense bf16 FLOP/s per device used for MFU when run.peak_flops is not given (vendor datasheets).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
                  "V100": 125e12, "T4": 65e12}

FAILURE_REASON_TAG = "ditscale.failure_reason"
STATUS_TAG = "ditscale.status"
RESULT_NAME = "result.json"  # <run dir>/result.json: how a training run ended (written by rank 0 at its end)


# ----------------------------------------------------------------------------------------------
# Environments: where batches come from, how checkpoints/metrics leave the worker.
# ----------------------------------------------------------------------------------------------


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

    def wrap_model(self, model: nn.Module, fsdp: bool) -> nn.Module:
        return model

    def batches(self, local_batch: int, epoch: int, seed: Optional[int], shuffle_buffer: int) -> Iterator[dict]:
        n = len(next(iter(self.rows.values())))
        order = np.arange(n)
        if seed is not None and shuffle_buffer > 0:
            order = np.random.default_rng(seed).permutation(n)
        for start in range(0, n - local_batch + 1, local_batch):
            idx = order[start:start + local_batch]
            yield {k: v[idx] for k, v in self.rows.items()}

    def checkpoint_location(self, step: int) -> tuple[Any, str]:
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), os.path.join(os.path.abspath(self.checkpoint_root), "checkpoints", f"step_{step:08d}")

    def report(self, metrics: dict, checkpoint_path: Optional[str]) -> None:
        self.reports.append((dict(metrics), checkpoint_path))

    def restore_dir(self) -> Optional[str]:
        return self.resume_from

    def write_result(self, record: dict) -> None:
        os.makedirs(self.checkpoint_root, exist_ok=True)
        with open(os.path.join(self.checkpoint_root, RESULT_NAME), "w") as f:
            json.dump(record, f)

    def barrier(self) -> None:
        pass


class RayEnv:
    """The Ray Train environment: the only place the loop touches Ray.

    One TorchTrainer may train several runs in sequence (a sweep trial's budgets): `set_run(subdir)` points
    checkpoints and the result record at <experiment dir>/<subdir>, the run's own directory (Ray Train keeps
    reported checkpoints inside its experiment directory).
    """

    def __init__(self) -> None:
        import ray.train

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self._storage = ctx.get_storage()
        self._restore: Optional[tuple[Optional[str]]] = None  # cached restore_dir() of the current run
        self._base = self._storage.experiment_fs_path.rstrip("/")  # the current run's directory
        self._record_placement()

    @property
    def fs(self) -> Any:
        return self._storage.storage_filesystem

    def set_run(self, subdir: str) -> None:
        """Write the next run's checkpoints and result to <experiment dir>/<subdir> ("" : the experiment dir)."""
        self._base = "/".join(x for x in (self._storage.experiment_fs_path.rstrip("/"), subdir.strip("/")) if x)
        self._restore = None

    def run_finished(self) -> bool:
        """Did the current run already write its result (before a worker or driver restart)?"""
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self._base}/{RESULT_NAME}").type != pafs.FileType.NotFound

    def _record_placement(self) -> None:
        """<experiment>/workers/rank<r>.json: node id, host, pid of this worker (placement diagnostics)."""
        import socket

        import ray

        fs, base = self.fs, self._storage.experiment_fs_path.rstrip("/")
        rec = {"rank": self.rank, "world_size": self.world_size, "node_id": ray.get_runtime_context().get_node_id(),
               "hostname": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        try:
            fs.create_dir(f"{base}/workers", recursive=True)
            with fs.open_output_stream(f"{base}/workers/rank{self.rank}.json") as f:
                f.write(json.dumps(rec).encode())
        except OSError:
            pass  # diagnostics only

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()  # RAY: the worker's assigned device

    def wrap_model(self, model: nn.Module, fsdp: bool) -> nn.Module:
        if fsdp:
            return _fully_shard(model)
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)  # RAY: DDP wrap (no-op for 1 worker)

    def batches(self, local_batch: int, epoch: int, seed: Optional[int], shuffle_buffer: int) -> Iterator[dict]:
        shard = self._train.get_dataset_shard("train")  # RAY: this worker's streaming split of the dataset
        kwargs: dict[str, Any] = {}
        if seed is not None and shuffle_buffer > 0:
            kwargs = {"local_shuffle_buffer_size": shuffle_buffer, "local_shuffle_seed": seed}
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
        ckpt = self._train.get_checkpoint()  # RAY: latest checkpoint after a worker/driver restart
        if ckpt is None or not ckpt.path.startswith(f"{self._base}/checkpoints/"):
            return None  # none yet, or the last checkpoint of an earlier run of this trainer: start fresh
        import pyarrow.fs as pafs

        if isinstance(ckpt.filesystem, pafs.LocalFileSystem):
            return ckpt.path
        tmp = tempfile.mkdtemp(prefix="ditscale-restore-")
        ckpt.to_directory(tmp)
        return tmp

    def write_result(self, record: dict) -> None:
        """<run dir>/result.json: how the run ended (read by the driver; marks the run done on a restart)."""
        self.fs.create_dir(self._base, recursive=True)
        tmp = f"{self._base}/.{RESULT_NAME}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(record).encode())
        self.fs.move(tmp, f"{self._base}/{RESULT_NAME}")

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()


def _fully_shard(model: nn.Module) -> nn.Module:
    """FSDP2: shard every transformer block, then the root (torch.distributed.fsdp.fully_shard)."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)
    return model


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _mix(*xs: int) -> int:
    """Deterministic 63-bit seed from integers (crc32 chain; no Python hash randomisation)."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _id_key(sample_id: Any) -> int:
    return zlib.crc32(str(sample_id).encode("utf-8"))


def _optimizer_param_names(optimizer: torch.optim.Optimizer, module: nn.Module) -> list[str]:
    """Parameter names in the order torch's optimizer state_dict numbers them (0, 1, ... across groups)."""
    name_of = {id(p): n for n, p in module.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _by_index(sd: dict, names: list[str]) -> dict:
    """Name-keyed optimizer state (torch.distributed.checkpoint) -> torch's index-keyed layout."""
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: v for n, v in sd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]}


def _by_name(sd: dict, names: list[str]) -> dict:
    """Index-keyed optimizer state (checkpoint files) -> name-keyed (torch.distributed.checkpoint)."""
    return {"state": {names[int(i)]: v for i, v in sd["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in sd["param_groups"]]}


def _to_cpu_full(t: torch.Tensor) -> torch.Tensor:
    if hasattr(t, "full_tensor"):  # FSDP2 DTensor -> gathered full tensor
        t = t.full_tensor()
    return t.detach().to("cpu").clone()


def measure_cpu_peak_flops(n: int = 512, reps: int = 5) -> float:
    """Measured fp32 matmul FLOP/s of this process (the CPU 'peak' for MFU)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        dt = time.perf_counter() - t0
        best = max(best, 2 * n ** 3 / max(dt, 1e-9))
    return best


def peak_flops_per_worker(cfg: TrainConfig, device: torch.device) -> float:
    """Peak FLOP/s of one worker: config, else GPU datasheet table, else measured CPU matmul rate."""
    if cfg.run.peak_flops:
        return float(cfg.run.peak_flops)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAK_FLOPS.items():
            if key in name:
                return val
    return measure_cpu_peak_flops()


def latents_to_model_space(batch: dict[str, torch.Tensor], gen: torch.Generator, scale: float, shift: float,
                           flip: torch.Tensor) -> torch.Tensor:
    """z = mean + std * eps from the image or its flip (per-sample `flip` [B] bool), then (z - shift) * scale."""
    f = flip.view(-1, 1, 1, 1)
    mean = torch.where(f, batch["latent_mean_flip"], batch["latent_mean"])  # [B,C,h,w]
    std = torch.where(f, batch["latent_std_flip"], batch["latent_std"])  # [B,C,h,w]
    eps = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)  # [B,C,h,w]
    return (mean + std * eps - shift) * scale  # [B,C,h,w] model-space x_0


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


class _Tracker:
    """Rank-0 MLflow logging through MlflowClient (explicit run id; safe across restarts)."""

    def __init__(self, plan: dict, rank: int) -> None:
        self.client = None
        self.run_id = plan.get("mlflow_run_id")
        if rank == 0 and self.run_id and plan.get("tracking_uri"):
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=plan["tracking_uri"])

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, int(step)) for k, v in values.items() if v is not None and math.isfinite(float(v))]
        if ms:
            self.client.log_batch(self.run_id, metrics=ms)

    def fail(self, reason: str) -> None:
        if self.client is None:
            return
        self.client.set_tag(self.run_id, FAILURE_REASON_TAG, reason)
        self.client.set_tag(self.run_id, STATUS_TAG, "failed")
        self.client.set_terminated(self.run_id, status="FAILED")


def _batch_to_torch(batch: dict[str, np.ndarray], keys: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for k in keys:
        v = np.asarray(batch[k])
        if v.dtype == object:  # ragged/list columns arrive as arrays of arrays: stack to the real shape
            v = np.stack([np.asarray(x) for x in v])
        if not v.flags.writeable:
            v = v.copy()
        t = torch.from_numpy(np.ascontiguousarray(v))
        if t.dtype in (torch.float16, torch.bfloat16, torch.float64):
            t = t.float()
        elif t.dtype == torch.int32:
            t = t.long()
        out[k] = t.to(device, non_blocking=True)
    return out


def null_condition(model: nn.Module, null_text: Optional[dict], device: torch.device) -> dict[str, torch.Tensor]:
    """Null (unconditional) cond for CFG dropout: the null class, or the dataset's empty-prompt embedding."""
    if tuple(model.cond_keys) == ("y",):
        return {"y": torch.tensor(model.config.num_classes, dtype=torch.long, device=device)}
    if null_text is None:
        raise ValueError("text-conditional model but the dataset has no null text embedding (null_text.safetensors)")
    return {k: v.to(device).float() if v.is_floating_point() else v.to(device) for k, v in null_text.items()}


def run_loop(plan: dict, env: Any) -> dict:
    """Train per `plan` (built by jobs.train.make_plan) in `env`; returns a summary dict (rank 0 meaningful)."""
    cfg: TrainConfig = from_dict(TrainConfig, plan["train"])
    rank, world = env.rank, env.world_size
    fsdp = bool(cfg.run.fsdp)
    threads = cfg.run.num_threads or max(1, int(cfg.run.cpus_per_worker))
    torch.set_num_threads(threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = env.device()
    torch.manual_seed(_mix(cfg.run.seed, 17))  # identical init on every rank (DDP also broadcasts)

    model_cfg = config_from_dict(plan["model_config"])
    model = build_model(model_cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()

    total_steps = int(plan["total_steps"])
    global_batch = cfg.data.batch_size
    local_batch = global_batch // world
    fpi = float(plan["train_flops_per_image"])
    point_steps = sorted(set(int(s) for s in plan["point_steps"]) | {total_steps})
    branch_steps = set(int(s) for s in plan.get("branch_steps", []))
    keep_steps = set(point_steps) | branch_steps

    # ---- resume: own checkpoint (worker/driver restart) first, else the configured init checkpoint.
    # Weights load into the full (unsharded) modules, before DDP/FSDP wrapping.
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "images_seen": 0, "train_flops": 0.0}
    own = env.restore_dir()
    restore = own or plan.get("init_from_local")
    logged: dict[str, float] = {}
    if restore:
        load_model_weights(restore, model, which="model")
        if (Path(restore) / "ema.safetensors").exists():
            load_model_weights(restore, ema, which="ema")
        else:
            ema.load_state_dict(model.state_dict())
        saved = json.loads((Path(restore) / "state.json").read_text())
        state.update({k: saved[k] for k in state if k in saved})
        if own:
            logged = dict(saved.get("metrics") or {})  # what the run last logged, until it logs again
        # FLOPs/images follow the step count (a branch may change nothing else).
        state["images_seen"] = state["step"] * global_batch
        state["train_flops"] = state["step"] * global_batch * fpi
    start_step = state["step"]

    # raw: the plain module (parameters, cond_keys, checkpoints). FSDP2 shards it in place (its parameters become
    # DTensors); DDP wraps it. The optimizer is built afterwards so it holds the parameters that are trained.
    raw = model
    model = env.wrap_model(raw, fsdp)
    if cfg.run.compile:
        model = torch.compile(model)
    groups = raw.param_groups(cfg.optim.lr, cfg.optim.weight_decay)
    for g in groups:
        g["base_lr"] = g["lr"]
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    param_names = _optimizer_param_names(optimizer, raw)
    if restore and (Path(restore) / "optimizer.json").exists():
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            # Every rank holds the full (index-keyed) state; each keeps its own shard of it.
            full = _by_name(read_optimizer_state(restore), param_names)
            set_optimizer_state_dict(raw, optimizer, optim_state_dict=full,
                                     options=StateDictOptions(full_state_dict=True))
        else:
            load_optimizer_state(restore, optimizer)
    model_params = dict(raw.named_parameters())
    if fsdp:
        from torch.distributed.tensor import distribute_tensor

        # EMA weights sharded exactly like the model's, so the update stays a local foreach on each rank.
        full_ema = dict(ema.named_parameters())
        ema_params = {n: distribute_tensor(full_ema[n].detach(), p.device_mesh, p.placements)
                      for n, p in model_params.items()}
    else:
        ema_params = dict(ema.named_parameters())

    obj_cfg = cfg.objective
    if cfg.data.cond_dropout is not None:
        import dataclasses

        obj_cfg = dataclasses.replace(obj_cfg, cond_dropout=cfg.data.cond_dropout)
    null_text = None
    if plan.get("null_text"):
        null_text = {k: torch.tensor(np.asarray(v)) for k, v in plan["null_text"].items()}
    null_cond = null_condition(raw, null_text, device)
    cond_keys = tuple(raw.cond_keys)
    data_keys = ("latent_mean", "latent_std", "latent_mean_flip", "latent_std_flip") + cond_keys
    if cond_keys == ("y",):
        data_keys = data_keys[:4] + ("label",)
    scale, shift = float(plan["scaling_factor"]), float(plan["shift_factor"])

    val = None
    if plan.get("val") and (rank == 0 or fsdp):  # a sharded model's forward needs every rank
        val_rows = {k: np.asarray(v) for k, v in plan["val"].items()}
        vb = _batch_to_torch(val_rows, data_keys, device)
        val_x0 = (vb["latent_mean"] - shift) * scale  # deterministic: posterior mean, no flip
        val_cond = {k: vb["label" if k == "y" else k] for k in cond_keys}
        val = (val_x0, val_cond)

    tracker = _Tracker(plan, rank)
    peak = peak_flops_per_worker(cfg, device) * world
    amp = device.type == "cuda" and cfg.run.bf16
    inject = cfg.run.inject_failure or None
    gen = torch.Generator(device=device)

    def validation() -> dict[str, float]:
        if val is None:
            return {}
        if fsdp:  # gather the sharded EMA into the full EMA module (all ranks)
            with torch.no_grad():
                for n, p in ema.named_parameters():
                    p.copy_(_to_cpu_full(ema_params[n]).to(p.device))
        out = {}
        for name, net in (("val_loss", raw), ("val_loss_ema", ema)):
            was_training = net.training
            net.eval()
            with torch.no_grad():
                out[name] = float(objectives.validation_loss(net, val[0], val[1], obj_cfg))
            net.train(was_training)
        return out

    def save(step: int, metrics: dict, point: bool) -> Optional[str]:
        """All ranks call (FSDP gathers); rank 0 writes <run dir>/checkpoints/step_X; everyone reports."""
        m_src: Any = raw
        e_src: Any = ema
        opt: Any = optimizer
        if fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            full_opts = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0 only
            m_src = _Dict(get_model_state_dict(raw, options=full_opts), raw)
            e_src = {n: _to_cpu_full(p) for n, p in ema_params.items()}
            opt = get_optimizer_state_dict(raw, optimizer, options=full_opts)
            opt = _by_index(opt, param_names) if rank == 0 else None
        path = None
        if rank == 0:
            fs, path = env.checkpoint_location(step)
            ck_state = {
                **state,
                "total_steps": total_steps,
                "global_batch": global_batch,
                "world_size": world,
                "lr_schedule": {"schedule": cfg.optim.schedule, "warmup_steps": cfg.optim.warmup_steps,
                                "decay_fraction": cfg.optim.decay_fraction, "total_steps": total_steps,
                                "lr_factor": lr_factor(max(step - 1, 0), total_steps, cfg.optim)},
                # The training RNG is re-seeded every step from (seed, rank, step) (per-sample (seed, epoch, id)
                # in deterministic mode), so (seed, step) restores it exactly for any world size.
                "rng": {"seed": cfg.run.seed, "scheme": "reseed(seed, rank|sample, step|epoch)"},
                "data_position": {"epoch": state["epoch"], "batch_in_epoch": state["batch_in_epoch"]},
                "budget_point": point,
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            }
            ck_config = {"model": plan["model_config"], "objective": plan["train"]["objective"],
                         "data": {"manifest": cfg.data.manifest, "scaling_factor": scale, "shift_factor": shift},
                         "train": plan["train"], "run_name": plan.get("run_name")}
            import pyarrow.fs as pafs

            if isinstance(fs, pafs.LocalFileSystem):
                save_checkpoint(path, model=m_src, ema=e_src, config=ck_config, state=ck_state, optimizer=opt)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    local = save_checkpoint(os.path.join(tmp, "ckpt"), model=m_src, ema=e_src, config=ck_config,
                                            state=ck_state, optimizer=opt)
                    _upload_committed(local, fs, path)
            _prune(fs, path, cfg.checkpoint.keep, keep_steps)
        env.report({**metrics, "step": step}, path)
        return path

    # ---- loop
    model.train()
    train_time = 0.0
    images_since = 0
    status, reason, last_loss = "finished", None, float("nan")
    last_ckpt = env.checkpoint_location(start_step)[1] if own else None
    step = start_step
    t_mark = time.perf_counter()
    while step < total_steps:
        epoch = state["epoch"]
        shuffle_seed = _mix(cfg.run.seed, epoch, rank) & 0x7FFFFFFF
        it = env.batches(local_batch, epoch, shuffle_seed, cfg.data.shuffle_buffer)
        produced = 0
        skip = state["batch_in_epoch"]
        for batch in it:
            produced += 1
            if produced <= skip:
                continue  # data position restore: fast-forward within the epoch
            if step >= total_steps:
                break
            if (inject and inject.get("mode", "raise") in ("raise", "exit") and int(inject.get("step", -1)) == step
                    and rank == int(inject.get("rank", 0))):
                _maybe_inject(inject, env, plan)
            if cfg.run.deterministic:
                # Canonical row order inside the batch: the result then depends only on WHICH rows a step sees.
                order = np.argsort(np.asarray([str(i) for i in batch["id"]]), kind="stable")
                batch = {k: np.asarray(v)[order] for k, v in batch.items()}
            b = _batch_to_torch(batch, data_keys, device)
            cond = {k: b["label" if k == "y" else k] for k in cond_keys}
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, total_steps, cfg.optim)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                if cfg.run.deterministic:
                    loss = _per_sample_loss(model, b, cond, batch["id"], epoch, cfg.run.seed, scale, shift, obj_cfg,
                                            null_cond, device)
                else:
                    gen.manual_seed(_mix(cfg.run.seed, rank, step))
                    flip = torch.rand(local_batch, generator=gen, device=device) < 0.5
                    x0 = latents_to_model_space(b, gen, scale, shift, flip)
                    loss = objectives.loss(model, x0, cond, gen, obj_cfg, null_cond)
            if inject and inject.get("mode") == "nan" and step >= int(inject.get("step", -1)):
                loss = loss * float("nan")  # test hook: a diverged step
            loss_avg = loss.detach().float().clone()
            if world > 1:
                torch.distributed.all_reduce(loss_avg, op=torch.distributed.ReduceOp.AVG)
            loss_val = float(loss_avg)
            if not math.isfinite(loss_val):
                status, reason = "failed", f"non-finite loss ({loss_val}) at step {step}"
                break
            loss.backward()
            grad_norm = None
            if cfg.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.optim.grad_clip)
                if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
                    grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            # EMA with the usual warm-up (decay <= (1+n)/(10+n)) so short runs are not dominated by the init.
            decay = min(cfg.optim.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                names = list(ema_params)
                torch._foreach_lerp_([ema_params[n] for n in names], [model_params[n].detach() for n in names],
                                     1.0 - decay)
            step += 1
            last_loss = loss_val
            state.update(step=step, batch_in_epoch=produced, images_seen=state["images_seen"] + global_batch,
                         train_flops=state["train_flops"] + fpi * global_batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            # Wall time since the end of the previous step's bookkeeping: data fetch + step (not ckpt/val/logging).
            train_time += time.perf_counter() - t_mark
            images_since += global_batch
            is_log = step % max(1, cfg.mlflow.log_every) == 0 or step == total_steps
            is_val = cfg.eval.val_every > 0 and step % cfg.eval.val_every == 0
            is_ckpt = step in keep_steps or (cfg.checkpoint.every_n_steps > 0 and step % cfg.checkpoint.every_n_steps == 0)
            if is_log or is_ckpt:
                ips = images_since / max(train_time, 1e-9)
                logged = {"loss": loss_val, "lr": optimizer.param_groups[0]["lr"], "images_per_s": ips,
                          "mfu": ips * fpi / peak, "train_flops": state["train_flops"],
                          "images_seen": state["images_seen"], "epoch": epoch}
                if grad_norm is not None:
                    logged["grad_norm"] = float(grad_norm)
                if is_val or is_ckpt:
                    logged.update(validation())
                tracker.metrics(logged, step)
                train_time, images_since = 0.0, 0
            elif is_val:
                tracker.metrics(validation(), step)
            if is_ckpt:
                last_ckpt = save(step, logged, step in keep_steps)
            t_mark = time.perf_counter()
        else:
            if produced == 0:
                raise RuntimeError(
                    f"data shard of rank {rank} yielded no batch of {local_batch} rows in epoch {epoch}: the dataset "
                    f"is smaller than the global batch ({global_batch}); lower data.batch_size"
                )
            state["epoch"] = epoch + 1
            state["batch_in_epoch"] = 0
            continue
        if status != "finished":
            break
    if status != "finished":
        tracker.fail(reason)
        if rank == 0:
            print(f"[ditscale] stopping: {reason}; last good checkpoint kept", flush=True)
        env.report({"status": status, "failure_reason": reason, "step": step}, None)
    if rank == 0:
        env.write_result(run_result(plan, status, reason, step, total_steps, state["train_flops"], last_loss, logged,
                                    last_ckpt))
    env.barrier()
    return {"status": status, "reason": reason, "step": step, "loss": last_loss, "checkpoint": last_ckpt,
            "train_flops": state["train_flops"], "metrics": logged}


def run_result(plan: dict, status: str, reason: Optional[str], steps: int, total_steps: int, train_flops: float,
               loss: float, metrics: dict, last_checkpoint: Optional[str]) -> dict:
    """The record of how a run ended (<run dir>/result.json), as the driver and the sweep read it."""
    if last_checkpoint and plan.get("run_dir"):  # storage path -> URI (s3://...) under the run's directory
        last_checkpoint = f"{plan['run_dir'].rstrip('/')}/checkpoints/{last_checkpoint.rstrip('/').rsplit('/', 1)[-1]}"
    return {"status": status, "reason": reason, "steps": int(steps), "total_steps": int(total_steps),
            "run_name": plan.get("run_name"), "train_flops": float(train_flops), "params": plan.get("params"),
            "loss": loss if math.isfinite(loss) else None, "val_loss": metrics.get("val_loss"),
            "images_per_s": metrics.get("images_per_s"), "mfu": metrics.get("mfu"),
            "last_checkpoint": last_checkpoint}


class _Dict(nn.Module):
    """A state-dict holder that save_checkpoint can treat as a module (FSDP gathered weights)."""

    def __init__(self, sd: dict, like: nn.Module) -> None:
        super().__init__()
        self._sd = sd
        self.config = like.config

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:  # type: ignore[override]
        return dict(self._sd)


def _per_sample_loss(model, b, cond, ids, epoch, seed, scale, shift, obj_cfg, null_cond, device) -> torch.Tensor:
    """Mean of per-sample losses, each with its own generator keyed by (seed, epoch, sample id).

    The randomness of a sample (flip, eps, t, CFG drop) then does not depend on which worker or batch
    position it lands in, so 1 worker x batch B and 2 workers x B/2 compute the same gradient.
    """
    losses = []
    for i in range(len(ids)):
        g = torch.Generator(device=device)
        g.manual_seed(_mix(seed, epoch, _id_key(ids[i])))
        bi = {k: v[i:i + 1] for k, v in b.items()}
        flip = torch.rand(1, generator=g, device=device) < 0.5
        x0 = latents_to_model_space(bi, g, scale, shift, flip)
        ci = {k: v[i:i + 1] for k, v in cond.items()}
        losses.append(objectives.loss(model, x0, ci, g, obj_cfg, null_cond))
    return torch.stack(losses).mean()


def _maybe_inject(inject: dict, env: Any, plan: dict) -> None:
    """Test hook: fail once at the configured step (marker file next to the checkpoints makes it one-shot)."""
    fs, path = env.checkpoint_location(0)
    marker = path.rsplit("/checkpoints/", 1)[0] + f"/_injected_failure_step{int(inject['step'])}"
    import pyarrow.fs as pafs

    if fs.get_file_info(marker).type != pafs.FileType.NotFound:
        return
    fs.create_dir(marker.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(marker) as f:
        f.write(b"1")
    if inject.get("mode", "raise") == "exit":
        os._exit(1)
    raise RuntimeError(f"injected failure at step {inject['step']}")


def _upload_committed(local: Path, fs: Any, path: str) -> None:
    """Upload a checkpoint dir with checkpoint.json (the completeness manifest) last."""
    names = sorted(p.name for p in Path(local).iterdir())
    names = [n for n in names if n != "checkpoint.json"] + ["checkpoint.json"]
    fs.create_dir(path, recursive=True)
    for n in names:
        with open(Path(local) / n, "rb") as src, fs.open_output_stream(f"{path}/{n}") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)


def _prune(fs: Any, new_path: str, keep: int, keep_steps: set[int]) -> None:
    """Delete periodic checkpoints beyond the newest `keep` (budget points / branch points always stay)."""
    import pyarrow.fs as pafs

    root = new_path.rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    steps = sorted(int(i.base_name[5:]) for i in infos if i.base_name.startswith("step_") and i.base_name[5:].isdigit())
    periodic = [s for s in steps if s not in keep_steps]
    for s in periodic[:-max(1, keep)] if len(periodic) > max(1, keep) else []:
        try:
            fs.delete_dir(f"{root}/step_{s:08d}")
        except OSError:
            pass


def _console_log_level(level: str) -> None:
    """run.log_level on this worker's console (the files keep everything).

    Ray Train filters its `ray.train.*` loggers by RunConfig.logging_config, but logs each report ("Reporting
    training result ...") through a logger named after its source file, which only the root logger's console
    handler sees; this sets that handler's level too.
    """
    import logging

    lvl = logging.getLevelName(str(level).upper())
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, lvl))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (runs on every worker): train config["runs"] in order in this worker group.

    A run that already wrote its result (before a restart) is skipped; the others resume from their own latest
    checkpoint or start from `init_from` (a WSD branch starts from its main run's checkpoint, written earlier
    in this same sequence).
    """
    from pipelines.infra import storage
    env = RayEnv()
    _console_log_level(config["runs"][0]["train"]["run"].get("log_level", "INFO"))
    for plan in config["runs"]:
        env.set_run(plan.get("run_subdir") or "")
        if env.run_finished():
            continue
        init = plan.get("init_from")
        if init and env.restore_dir() is None:
            if not storage.exists(storage.join(init, "checkpoint.json")):
                if env.rank == 0:
                    reason = f"checkpoint.init_from {init} does not exist (the run that writes it did not reach it)"
                    print(f"[ditscale] run {plan['run_name']} not started: {reason}", flush=True)
                    env.write_result(run_result(plan, "failed", reason, 0, int(plan["total_steps"]), 0.0,
                                                float("nan"), {}, None))
                env.barrier()
                continue
            plan = {**plan, "init_from_local": storage.local_copy(init)}
        run_loop(plan, env)
