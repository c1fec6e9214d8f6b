"""The per-worker training loop: an ordinary torch loop in named phases, plus a few marked Ray calls (in env.py).

    Trainer(plan, env).run():
        setup       build model + EMA, restore (own checkpoint, else checkpoint.init_from), wrap (DDP / FSDP2 /
                    compile, jobs/train/parallel.py), AdamW with muP groups, the null condition, validation rows
        train_step  latents drawn at train time (posterior sample, random flip), CFG dropout, the diffusion loss
                    (ditcore.objectives), backward, clip, step, EMA update
        after_step  log (rank 0, MLflow), validate, checkpoint at budget points / every N steps (checkpointing.py)

`train_loop_per_worker` is what Ray Train's TorchTrainer runs on every worker: the runs of one TorchTrainer (a
sweep trial's budgets) in order. `LocalEnv` runs the identical loop in-process (the bench's no-Ray baseline).
The run stops after ceil(budget_flops / (train_flops_per_image x global batch)) steps.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ditcore import objectives
from ditcore.models import build_model, config_from_dict
from ditcore.models.layers import set_activation_checkpointing
from jobs.train import checkpointing
from jobs.train.config import lr_factor
from jobs.train.data import batch_to_torch, data_keys, latents_to_model_space, mix_seed
from jobs.train.env import RESULT_NAME, LocalEnv, RayTrainEnv
from jobs.train.faults import FaultInjector
from jobs.train.metrics import RunTracker, peak_flops_per_worker
from jobs.train.parallel import (
    grad_sync,
    materialize_from_rank0,
    maybe_compile,
    optimizer_param_names,
    shard_from_rank0,
    shard_like,
    to_cpu_full,
)
from jobs.train.plan import RunPlan
from pipelines.infra.code import environment, software_versions

__all__ = ["LocalEnv", "RayTrainEnv", "RunResult", "Trainer", "mix_seed", "train_loop_per_worker"]


def null_condition(model: nn.Module, null_text: Optional[dict], device: torch.device) -> dict[str, torch.Tensor]:
    """Null (unconditional) cond for CFG dropout: the null class, or the data set's empty-prompt embedding."""
    if tuple(model.cond_keys) == ("y",):
        return {"y": torch.tensor(model.config.num_classes, dtype=torch.long, device=device)}
    if null_text is None:
        raise ValueError("text-conditional model but the data set has no null text embedding (null_text.safetensors)")
    # A copy: the loaded arrays may be read-only (torch warns on non-writable numpy arrays).
    copy = {k: v.clone() if torch.is_tensor(v) else torch.from_numpy(np.array(v)) for k, v in null_text.items()}
    return {k: v.to(device) for k, v in copy.items()}


@dataclass
class RunResult:
    """How a run ended (<run dir>/result.json), as the driver and the sweep read it."""

    status: str  # "finished" | "failed"
    reason: Optional[str]
    steps: int
    total_steps: int
    run_name: str
    train_flops: float
    params: int
    loss: Optional[float]
    val_loss: Optional[float]
    images_per_s: Optional[float]
    mfu: Optional[float]
    last_checkpoint: Optional[str]
    images_seen: int = 0
    # Where this worker's time went (s): setup (model, restore, peak), data (waiting for batches), step (forward,
    # backward, update), checkpoint (checkpoints, validation, logging after steps): the sweep's goodput breakdown.
    timing: dict[str, float] = dataclasses.field(default_factory=dict)
    peak_flops: Optional[float] = None  # the FLOP/s the MFU figures divide by
    # Training FLOPs this fit computed and kept: a worker group's that Ray Train replaced after a failure included
    # (up to the checkpoint resumed from), not restored from an earlier fit, not a branch's shared prefix.
    flops_run: float = 0.0
    code: Optional[str] = None  # fingerprint of the training code that ran (RunPlan.code; pipelines/infra/code.py)
    # Every code that trained its weights: the checkpoint it resumed or branched from included (Progress.codes).
    codes: list[str] = dataclasses.field(default_factory=list)
    # Every Python / torch / numpy that trained its weights, the checkpoint it resumed or branched from included
    # (Progress.software); `env` is the process that wrote this record.
    software: list[dict[str, Any]] = dataclasses.field(default_factory=lambda: [software_versions()])
    # The software and machine of the process that wrote this record (pipelines/infra/code.py `environment`).
    env: dict[str, Any] = dataclasses.field(default_factory=environment)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record."""
        return dataclasses.asdict(self)


class Trainer:
    """One training run on one worker: `setup` in the constructor, then `run()` (train_step / after_step)."""

    def __init__(self, plan: RunPlan, env: Any) -> None:
        t_init = time.perf_counter()
        self.plan, self.env, self.cfg = plan, env, plan.cfg
        self._keep_steps, self._unvalidated_steps = plan.keep_steps, plan.branch_only_steps  # read every step
        self.rank, self.world = env.rank, env.world_size
        self.fsdp = bool(self.cfg.run.fsdp)
        torch.set_num_threads(self.cfg.run.num_threads or max(1, int(self.cfg.run.cpus_per_worker)))
        if self.cfg.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = env.device()
        self.global_batch = self.cfg.data.batch_size
        self.local_batch = self.global_batch // self.world
        self._setup_model()
        self._setup_optimizer()
        self._setup_conditioning()
        self.tracker = RunTracker(plan.mlflow_run_id, plan.tracking_uri, self.rank)
        self.peak = peak_flops_per_worker(self.cfg, self.device) * self.world
        self.amp = self.device.type == "cuda" and self.cfg.run.bf16
        self.faults = FaultInjector(self.cfg.debug.inject_failure, env)
        self.gen = torch.Generator(device=self.device)
        self.logged: dict[str, float] = dict(self.progress.metrics)
        self.last_ckpt = env.checkpoint_location(self.progress.step)[1] if self.own_restore else None
        self._window = [0.0, 0]  # wall time and images since the last log line
        self.timing = {"setup_s": time.perf_counter() - t_init, "data_s": 0.0, "step_s": 0.0, "checkpoint_s": 0.0}
        # Steps before this fit: restored from an earlier one, or a branch's shared prefix. A worker group Ray Train
        # started after a failure counts the steps its predecessor trained and checkpointed (env.fit_start_step).
        self._first_step = env.fit_start_step(self.progress.step)

    # ---- setup ---------------------------------------------------------------------------------------

    def _setup_model(self) -> None:
        """Model + EMA (identical init on every rank), restored before DDP/FSDP wrapping (sharded: after it).

        run.meta_init: every rank shards a model built on the meta device; rank 0 alone builds (and restores) the
        whole model on the host, and its state is scattered shard by shard (parallel.materialize_from_rank0).
        """
        r = self.cfg.run
        torch.manual_seed(mix_seed(r.seed, 17))
        meta = bool(r.meta_init)
        full = None
        if not meta or self.rank == 0:
            full = build_model(config_from_dict(self.plan.model_config))
            full = full if meta else full.to(self.device)
        with torch.device("meta") if meta else contextlib.nullcontext():
            self.raw = build_model(config_from_dict(self.plan.model_config)) if meta else full
        self.ema = copy.deepcopy(full if full is not None else self.raw).requires_grad_(False).eval()
        own = self.env.restore_dir()
        self.own_restore = bool(own)
        self.restore_from = own or self.plan.init_from_local
        self.sharded_restore = bool(self.restore_from) and checkpointing.is_sharded(self.restore_from)
        self.progress = checkpointing.Progress(
            codes=checkpointing.with_code([], self.plan.code), software=checkpointing.with_software([])
        )
        if self.restore_from:
            self.progress = checkpointing.restore_weights(
                self.restore_from,
                full,
                self.ema,
                self.plan,
                bool(own),
                weights=full is not None and not self.sharded_restore,
            )
        if r.activation_checkpointing:
            set_activation_checkpointing(self.raw, True)
        # raw: the plain module (parameters, cond_keys, checkpoints); FSDP2 shards it in place, DDP wraps it.
        self.wrapped = self.env.wrap_model(self.raw, self.fsdp, r.fsdp_mixed_precision)
        self._ema_full = None
        if meta:
            materialize_from_rank0(self.raw, full, self.device)
            self._ema_full = self.ema if self.rank == 0 else None  # scattered into EMA shards in _setup_optimizer
        self.model = maybe_compile(self.wrapped, r.compile)

    def _setup_optimizer(self) -> None:
        """AdamW over the model's (muP) parameter groups, built after sharding; EMA sharded like the model."""
        o = self.cfg.optim
        groups = self.raw.param_groups(o.lr, o.weight_decay)
        for g in groups:
            g["base_lr"] = g["lr"]
        # The fused kernel updates every parameter in one call: on CPU 2.5-4.4x faster than the per-tensor loop torch
        # uses there by default, which saves 3-10% of the quickstart models' steps (bench/optimizer_step.py).
        # Sharded (DTensor) parameters keep torch's default implementation.
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            weight_decay=o.weight_decay,
            fused=True if not self.fsdp and self.device.type in ("cpu", "cuda") else None,
        )
        self.param_names = optimizer_param_names(self.optimizer, self.raw)
        # torch's load_state_dict replaces each group's hyper-parameters with the checkpoint's: a run started from
        # another run's checkpoint (checkpoint.init_from) with its own optim.lr / betas / eps / weight_decay keeps
        # those, and only the moment estimates and step counts come from the checkpoint.
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if self.restore_from and not self.sharded_restore:
            checkpointing.restore_optimizer(self.restore_from, self.raw, self.optimizer, self.param_names, self.fsdp)
        self.model_params = dict(self.raw.named_parameters())
        if self.cfg.run.meta_init:
            ema_full = dict(self._ema_full.named_parameters()) if self._ema_full is not None else None
            self.ema_params = shard_from_rank0(ema_full, self.model_params)
            self._ema_full = None
        else:
            ema_full = dict(self.ema.named_parameters())
            self.ema_params = shard_like(ema_full, self.model_params) if self.fsdp else ema_full
        if self.sharded_restore:
            checkpointing.restore_sharded(self.restore_from, self.raw, self.optimizer, self.ema_params)
        for group, hparams in zip(self.optimizer.param_groups, configured):
            group.update(hparams)

    def _setup_conditioning(self) -> None:
        """Objective (with data.cond_dropout), null condition, batch columns, validation batch."""
        self.obj_cfg = self.cfg.objective
        if self.cfg.data.cond_dropout is not None:
            self.obj_cfg = dataclasses.replace(self.obj_cfg, cond_dropout=self.cfg.data.cond_dropout)
        self.null_cond = null_condition(self.raw, self.plan.null_text, self.device)
        text = self.plan.manifest.text  # per-encoder dropout of a multi-encoder text set (data.text_dropout)
        self.text_parts = text.layouts() if text is not None and self.cfg.data.text_dropout else []
        self.cond_keys = tuple(self.raw.cond_keys)
        self.data_keys = data_keys(self.cond_keys)
        vae = self.plan.manifest.vae
        self.scale, self.shift = float(vae.scaling_factor), float(vae.shift_factor or 0.0)
        self.val = None
        if self.plan.val and (self.rank == 0 or self.fsdp):  # a sharded model's forward needs every rank
            vb = batch_to_torch(self.plan.val, self.data_keys, self.device)
            x0 = (vb["latent_mean"] - self.shift) * self.scale  # deterministic: posterior mean, no flip
            self.val = (x0, self._cond(vb))

    def _cond(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: b["label" if k == "y" else k] for k in self.cond_keys}

    # ---- one step ------------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, np.ndarray], step: int, micro: int = 0) -> torch.Tensor:
        """The diffusion loss of one (micro-)batch: latents drawn at train time, CFG dropout, objectives.loss."""
        b = batch_to_torch(batch, self.data_keys, self.device)
        cond = self._cond(b)
        # Layers that draw from the global generator (a U-Net's dropout) draw per step too, so a resumed run and a
        # WSD branch repeat the masks of an uninterrupted run, and each rank draws its own (run.deterministic: per
        # sample, in _per_sample_loss).
        torch.manual_seed(mix_seed(self.cfg.run.seed, self.rank, step, micro, 31))
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.cfg.run.deterministic:
                return self._per_sample_loss(b, cond, batch["id"])
            self.gen.manual_seed(mix_seed(self.cfg.run.seed, self.rank, step, *([micro] if micro else [])))
            flip = torch.rand(len(batch["id"]), generator=self.gen, device=self.device) < self.cfg.data.flip
            x0 = latents_to_model_space(b, self.gen, self.scale, self.shift, flip)
            cond = self._drop_text(cond, self.gen)
            return objectives.loss(self.model, x0, cond, self.gen, self.obj_cfg, self.null_cond)

    def _drop_text(self, cond: dict, gen: torch.Generator) -> dict:
        if not self.text_parts:
            return cond
        from pipelines.encoders.text import drop_text_parts

        return drop_text_parts(cond, self.null_cond, self.text_parts, self.cfg.data.text_dropout, gen)

    def _per_sample_loss(self, b: dict, cond: dict, ids: np.ndarray) -> torch.Tensor:
        """Mean of per-sample losses, each with its own generator keyed by (seed, epoch, sample id).

        A sample's randomness (flip, eps, t, CFG drop) then does not depend on which worker or batch position it
        lands in, so 1 worker x batch B and 2 workers x B/2 compute the same gradient (run.deterministic).
        """
        losses = []
        for i in range(len(ids)):
            key = (self.cfg.run.seed, self.progress.epoch, zlib.crc32(str(ids[i]).encode()))
            g = torch.Generator(device=self.device)
            g.manual_seed(mix_seed(*key))
            torch.manual_seed(mix_seed(*key, 31))  # a dropout mask per sample too, wherever the sample lands
            bi = {k: v[i : i + 1] for k, v in b.items()}
            x0 = latents_to_model_space(
                bi, g, self.scale, self.shift, torch.rand(1, generator=g, device=self.device) < self.cfg.data.flip
            )
            ci = self._drop_text({k: v[i : i + 1] for k, v in cond.items()}, g)
            losses.append(objectives.loss(self.model, x0, ci, g, self.obj_cfg, self.null_cond))
        return torch.stack(losses).mean()

    def train_step(self, batch: dict[str, np.ndarray], step: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One optimizer step over run.grad_accum micro-batches; (this worker's mean loss, grad norm) as device
        tensors: nothing waits for the device here (the loop reads them every mlflow.log_every steps).

        Each micro-batch's loss is scaled by 1/grad_accum and gradients are synchronised only in the last backward,
        so the update equals the one of the whole batch (exactly so in run.deterministic, whose randomness is per
        sample). A non-finite loss is found at the next log step, which stops the run before any checkpoint.
        """
        if self.cfg.run.deterministic:
            # Canonical row order inside the batch: the result then depends only on WHICH rows a step sees.
            order = np.argsort(np.asarray([str(i) for i in batch["id"]]), kind="stable")
            batch = {k: np.asarray(v)[order] for k, v in batch.items()}
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, self.plan.total_steps, self.cfg.optim)
        n = self.cfg.run.grad_accum
        rows = len(batch["id"]) // n
        total = torch.zeros((), device=self.device)
        for i in range(n):
            micro = {k: np.asarray(v)[i * rows : (i + 1) * rows] for k, v in batch.items()} if n > 1 else batch
            with grad_sync(self.wrapped, self.raw, self.fsdp, last=i == n - 1):
                loss = self.faults.corrupt_loss(self._loss(micro, step, i), step)
                (loss / n if n > 1 else loss).backward()
            total += loss.detach().float()
        grad_norm = None
        if self.cfg.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.optim.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
                grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema(step)
        return total / n, grad_norm

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        # EMA with the usual warm-up (decay <= (1+n)/(10+n)) so short runs are not dominated by the init.
        decay = min(self.cfg.optim.ema_decay, (1 + step) / (10 + step))
        names = list(self.ema_params)
        torch._foreach_lerp_(
            [self.ema_params[n] for n in names], [self.model_params[n].detach() for n in names], 1.0 - decay
        )

    # ---- after a step --------------------------------------------------------------------------------

    def validation(self) -> dict[str, float]:
        """Deterministic validation loss of the model and its EMA on the held-out rows."""
        if self.val is None:
            return {}
        loss = self._val_loss(self.raw)
        # ema_decay 0: the EMA is a copy of the weights (lerp with weight 1 returns them exactly), so its loss is
        # the same number; not computing it (nor gathering a sharded EMA) halves validation, which is most of a
        # small run's checkpoint time.
        if self.cfg.optim.ema_decay == 0:
            return {"val_loss": loss, "val_loss_ema": loss}
        if self.fsdp:
            self._gather_ema()
        return {"val_loss": loss, "val_loss_ema": self._val_loss(self.ema)}

    def _val_loss(self, net: nn.Module) -> float:
        was_training = net.training
        net.eval()
        loss = float(objectives.validation_loss(net, self.val[0], self.val[1], self.obj_cfg))
        net.train(was_training)
        return loss

    def _gather_ema(self) -> None:
        """Gather the sharded EMA into the full EMA module (a collective: all ranks)."""
        if any(p.is_meta for p in self.ema.parameters()):  # run.meta_init: the module gets storage when needed
            self.ema.to_empty(device=self.device)
            with torch.no_grad():
                for (_, b), (_, src) in zip(self.ema.named_buffers(), self.raw.named_buffers()):
                    b.copy_(src)
        self.ema.to(self.device)
        with torch.no_grad():
            for n, p in self.ema.named_parameters():
                p.copy_(to_cpu_full(self.ema_params[n]).to(p.device))

    def _step_kinds(self, step: int) -> tuple[bool, bool, bool]:
        """(log, validate, checkpoint) after `step`: validation at every val_every steps and at checkpoints, except a
        checkpoint kept only as a WSD branch start (an undecayed model no point is read from: skipping it halved
        MMDiT-d3's checkpoint time in the quickstart sweep, 47 -> 24 s)."""
        cfg = self.cfg
        is_log = step % max(1, cfg.mlflow.log_every) == 0 or step == self.plan.total_steps
        periodic = cfg.checkpoint.every_n_steps > 0 and step % cfg.checkpoint.every_n_steps == 0
        kept = step in self._keep_steps
        is_val = (cfg.eval.val_every > 0 and step % cfg.eval.val_every == 0) or periodic
        is_val = is_val or (kept and step not in self._unvalidated_steps)
        return is_log, is_val, kept or periodic

    def _read_loss(self) -> float:
        """Mean training loss of the steps since the last read, averaged over workers: the loop's one host read."""
        if self._loss_sum is None:
            return self.last_loss
        t = (self._loss_sum / self._loss_count).detach().float().clone()
        if self.world > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.AVG)
        self._loss_sum, self._loss_count = None, 0
        self.last_loss = float(t)
        return self.last_loss

    def after_step(self, step: int, grad_norm: Optional[torch.Tensor], epoch: int) -> Optional[str]:
        """Log every log_every steps, validate (see _step_kinds), checkpoint at kept steps / every N steps; the
        failure reason when the loss read at a log or checkpoint step is not finite (no checkpoint then)."""
        is_log, is_val, is_ckpt = self._step_kinds(step)
        if is_log or is_ckpt:
            loss = self._read_loss()
            if not math.isfinite(loss):
                return f"non-finite loss ({loss}) in the steps up to {step}"
            if grad_norm is not None and not math.isfinite(float(grad_norm)):
                return f"non-finite gradient norm ({float(grad_norm)}) at step {step} (loss {loss:.4g}): diverged"
            wall, images = self._window
            ips = images / max(wall, 1e-9)
            self.logged = {
                "loss": loss,
                "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": ips,
                "mfu": ips * self.plan.train_flops_per_image / self.peak,
                "peak_flops": self.peak,  # what mfu divides by (all workers; a CPU's is measured at each start)
                "train_flops": self.progress.train_flops,
                "images_seen": self.progress.images_seen,
                "epoch": epoch,
            }
            if grad_norm is not None:
                self.logged["grad_norm"] = float(grad_norm)
            if is_val:
                self.logged.update(self.validation())
            self.tracker.metrics(self.logged, step)
            self._progress_line(step)
            self._window = [0.0, 0]
        elif is_val:
            self.tracker.metrics(self.validation(), step)
        if is_ckpt:
            if not self._weights_finite():
                # The loss read here is that of the batch before the update: an infinite gradient (not caught
                # by a gradient norm when grad_clip is 0) turns the weights to NaN with the loss still finite.
                return f"non-finite weights after the update of step {step} (loss {loss:.4g}): diverged"
            self.last_ckpt = checkpointing.save(
                self.env,
                self.plan,
                self.progress,
                step,
                self.logged,
                step in self.plan.keep_steps,
                raw=self.raw,
                ema=self.ema,
                ema_params=self.ema_params,
                optimizer=self.optimizer,
                names=self.param_names,
                fsdp=self.fsdp,
            )

    @torch.no_grad()
    def _weights_finite(self) -> bool:
        """Whether every weight is finite on every worker (checked before a checkpoint keeps them)."""
        ok = torch.ones((), device=self.device)
        for p in self.raw.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2: this worker's shard
            if not bool(torch.isfinite(local).all()):
                ok.zero_()
                break
        if self.world > 1:
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok)

    def _progress_line(self, step: int) -> None:
        """Rank 0: step/total, loss, images/s, MFU and ETA on the console (silent under run.log_level WARNING+)."""
        import logging

        if self.rank != 0 or logging.getLevelName(str(self.cfg.run.log_level).upper()) > logging.INFO:
            return
        m, total = self.logged, self.plan.total_steps
        ips = m.get("images_per_s") or 0.0
        eta = (total - step) * self.global_batch / ips if ips > 0 else float("nan")
        eta_s = f"{int(eta // 60)}:{int(eta % 60):02d}" if eta == eta else "?"
        print(
            f"[{self.plan.run_name}] step {step}/{total} loss {m['loss']:.4f} {ips:.1f} img/s "
            f"MFU {m['mfu']:.1%} ETA {eta_s}",
            flush=True,
        )

    # ---- the loop ------------------------------------------------------------------------------------

    def _epoch(self) -> Optional[str]:
        """Train through one epoch (or to the end of the run); the failure reason, or None."""
        p = self.progress
        epoch, skip, produced = p.epoch, p.batch_in_epoch, 0
        t_mark = time.perf_counter()
        for batch in self.env.batches(self.local_batch, epoch, self.cfg.run.seed, self.cfg.data.shuffle_buffer):
            produced += 1
            if produced <= skip:
                continue  # data position restore: fast-forward within the epoch
            if p.step >= self.plan.total_steps:
                return None
            self.faults.before_step(p.step)
            t_batch = time.perf_counter()
            self.timing["data_s"] += t_batch - t_mark
            loss, grad_norm = self.train_step(batch, p.step)
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss  # on the device: no sync
            self._loss_count += 1
            p.step += 1
            p.batch_in_epoch = produced
            p.images_seen += self.global_batch
            p.train_flops += self.plan.train_flops_per_image * self.global_batch
            if self.device.type == "cuda" and any(self._step_kinds(p.step)):
                torch.cuda.synchronize(self.device)  # once per log step: the window's time covers the device work
            # Data fetch + step time since the last step's bookkeeping (not checkpoint / validation / logging).
            self._window[0] += time.perf_counter() - t_mark
            self._window[1] += self.global_batch
            t_after = time.perf_counter()
            self.timing["step_s"] += t_after - t_batch
            reason = self.after_step(p.step, grad_norm, epoch)
            t_mark = time.perf_counter()
            self.timing["checkpoint_s"] += t_mark - t_after
            if reason is not None:
                return reason
        if p.step < self.plan.total_steps:
            if produced == 0:
                raise RuntimeError(
                    f"data shard of rank {self.rank} yielded no batch of {self.local_batch} rows in "
                    f"epoch {epoch}: the data set is smaller than the global batch "
                    f"({self.global_batch}); lower data.batch_size"
                )
            p.epoch, p.batch_in_epoch = epoch + 1, 0
        return None

    def run(self) -> RunResult:
        """Train to the run's budget; write the result record (rank 0); the result."""
        self.model.train()
        self.last_loss = float("nan")
        self._loss_sum: Optional[torch.Tensor] = None  # training loss summed on the device since the last read
        self._loss_count = 0
        reason = None
        while self.progress.step < self.plan.total_steps and reason is None:
            reason = self._epoch()
        if reason is not None:
            self.tracker.fail(reason)
            if self.rank == 0:
                print(f"[ditscale] stopping: {reason}; last good checkpoint kept", flush=True)
            self.env.report({"status": "failed", "failure_reason": reason, "step": self.progress.step}, None)
        result = self._result("failed" if reason else "finished", reason)
        if self.rank == 0:
            self.env.write_result(result.to_dict())
        self.env.barrier()
        return result

    def _result(self, status: str, reason: Optional[str]) -> RunResult:
        last = self.last_ckpt
        if last and self.plan.run_dir:  # storage path -> URI (s3://...) under the run's directory
            last = f"{self.plan.run_dir.rstrip('/')}/checkpoints/{last.rstrip('/').rsplit('/', 1)[-1]}"
        m = self.logged
        return RunResult(
            status=status,
            reason=reason,
            steps=self.progress.step,
            total_steps=self.plan.total_steps,
            run_name=self.plan.run_name,
            train_flops=self.progress.train_flops,
            params=self.plan.params,
            loss=self.last_loss if math.isfinite(self.last_loss) else None,
            val_loss=m.get("val_loss"),
            images_per_s=m.get("images_per_s"),
            mfu=m.get("mfu"),
            last_checkpoint=last,
            images_seen=self.progress.images_seen,
            timing={k: round(v, 3) for k, v in self.timing.items()},
            flops_run=(self.progress.step - self._first_step) * self.global_batch * self.plan.train_flops_per_image,
            peak_flops=self.peak,
            code=self.plan.code or None,
            codes=list(self.progress.codes),
            software=list(self.progress.software),
        )


def failed_result(plan: RunPlan, reason: str) -> RunResult:
    """The record of a run that could not start."""
    return RunResult(
        status="failed",
        reason=reason,
        steps=0,
        total_steps=plan.total_steps,
        run_name=plan.run_name,
        train_flops=0.0,
        params=plan.params,
        loss=None,
        val_loss=None,
        images_per_s=None,
        mfu=None,
        last_checkpoint=None,
        code=plan.code or None,
        codes=[plan.code] if plan.code else [],
    )


def _console_log_level(level: str) -> None:
    """run.log_level on this worker's console (the files keep everything).

    Ray Train filters its `ray.train.*` loggers by RunConfig.logging_config, but logs each report through a logger
    named after its source file, which only the root logger's console handler sees; this sets that handler too.
    """
    import logging

    lvl = logging.getLevelName(str(level).upper())
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, lvl))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (every worker): train config["runs"] (RunPlans) in order in this worker group.

    A run that already wrote its result (before a restart) is skipped; the others resume from their own latest
    checkpoint or start from `init_from` (a WSD branch starts from its main run's checkpoint, written earlier in
    this same sequence).
    """
    from pipelines.infra import storage

    # the driver loader's rows (an object ref), or None; the fit's id, the same in every worker group of this fit
    env = RayTrainEnv(rows=config.get("rows"), fit_id=config.get("fit_id", ""))
    plans: list[RunPlan] = config["runs"]
    _console_log_level(plans[0].cfg.run.log_level)
    for plan in plans:
        env.set_run(plan.run_subdir)
        if env.run_finished():
            continue
        init = plan.cfg.checkpoint.init_from
        # Downloads (a remote init_from, a remote restore) are deleted once the run is over: a worker group trains
        # many runs, each starting from a checkpoint.
        with contextlib.ExitStack() as downloads:
            downloads.callback(env.release_restore)
            if init and env.restore_dir() is None:
                if not storage.exists(storage.join(init, "checkpoint.json")):
                    reason = f"checkpoint.init_from {init} does not exist (the run that writes it did not reach it)"
                    if env.rank == 0:
                        print(f"[ditscale] run {plan.run_name} not started: {reason}", flush=True)
                        env.write_result(failed_result(plan, reason).to_dict())
                    env.barrier()
                    continue
                local = downloads.enter_context(storage.local_copy_scope(init))
                plan = dataclasses.replace(plan, init_from_local=local)
            config.get("trainer", Trainer)(plan, env).run()  # a Trainer subclass (jobs/distill) may replace the loss


__all__ += ["RESULT_NAME", "failed_result", "null_condition"]
