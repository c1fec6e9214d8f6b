"""The distillation loop: jobs.train.loop.Trainer with the teacher's CFG prediction as the target.

Only the model set-up (student from the teacher's EMA weights, frozen teacher), the loss and the validation loss
differ from training; data, optimizer, EMA, logging, checkpoints and fault recovery are the training loop's.
"""

from __future__ import annotations

import torch

from ditcore.checkpoint import load_checkpoint
from ditcore.guidance_distill import GuidanceRange, distillation_loss, load_teacher_weights
from jobs.train.checkpointing import recorded_codes, with_code, with_software
from jobs.train.data import batch_to_torch, latents_to_model_space
from jobs.train.loop import Trainer, mix_seed

TEACHER_KEY = "teacher"  # plan.params_extra keys set by jobs/distill/driver.py
RANGE_KEYS = ("w_min", "w_max")


class DistillTrainer(Trainer):
    """A Trainer whose model is a guidance-embedded student and whose loss is the distillation loss."""

    def _setup_model(self) -> None:
        if self.cfg.run.fsdp:
            raise ValueError("guidance distillation runs with DDP (run.fsdp must be false)")
        from pipelines.infra import storage

        extra = self.plan.params_extra
        self.guidance = GuidanceRange(float(extra["w_min"]), float(extra["w_max"]))
        with storage.local_copy_scope(extra[TEACHER_KEY]) as local:
            teacher = load_checkpoint(local, use_ema=True, device=str(self.device))
        self.teacher = teacher.model.requires_grad_(False).eval()
        super()._setup_model()  # the student (plan.model_config), restored from its own checkpoint when resuming
        if not self.own_restore:  # a fresh run starts from the teacher's (EMA) weights, identical on every rank
            with torch.no_grad():
                load_teacher_weights(self.raw, self.teacher.state_dict())
                self.ema.load_state_dict(self.raw.state_dict())
            # The codes that trained the teacher (its state.json) trained the student's starting weights too.
            self.progress.codes = with_code(recorded_codes(teacher.state), self.plan.code)
            self.progress.software = with_software(teacher.state.get("software") or [])

    def _loss(self, batch, step: int, micro: int = 0) -> torch.Tensor:
        b = batch_to_torch(batch, self.data_keys, self.device)
        cond = self._cond(b)
        self.gen.manual_seed(mix_seed(self.cfg.run.seed, self.rank, step, *([micro] if micro else [])))
        # The teacher's data.flip: a set whose captions name left and right was trained without mirroring.
        flip = torch.rand(b["latent_mean"].shape[0], generator=self.gen, device=self.device) < self.cfg.data.flip
        x0 = latents_to_model_space(b, self.gen, self.scale, self.shift, flip)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return distillation_loss(
                self.model, self.teacher, x0, cond, self.null_cond, self.obj_cfg, self.gen, self.guidance
            )

    def validation(self) -> dict[str, float]:
        """Distillation loss of the student and its EMA on the held-out rows (fixed noise, t and w)."""
        if self.val is None:
            return {}
        out = {}
        for name, net in (("val_loss", self.raw), ("val_loss_ema", self.ema)):
            was_training = net.training
            net.eval()
            g = torch.Generator(device=self.device).manual_seed(mix_seed(self.cfg.run.seed, 991))
            with torch.no_grad():
                loss = distillation_loss(
                    net, self.teacher, self.val[0], self.val[1], self.null_cond, self.obj_cfg, g, self.guidance
                )
            out[name] = float(loss)
            net.train(was_training)
        return out
