"""Guidance distillation (FLUX.1-dev style): a student that takes the CFG scale w as an input matches the teacher's
classifier-free-guided prediction u + w (c - u) in ONE forward pass, halving the model calls per sampling step.

The student is the teacher's architecture with `guidance_embed=True` (w embedded like the timestep and added to
the conditioning vector; the embedder's output layer starts at zero, so the student starts equal to the teacher's
conditional prediction). Training draws x_t as the teacher's objective does (same process, time sampler) and
w ~ U[w_min, w_max] per sample; the target is the teacher's guided prediction in the objective's prediction space
(ditcore.objectives.sampling_fn: eps / v / x0 / velocity, or the EDM denoiser), which is what the samplers use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from ditcore.objectives import ObjectiveConfig, drop_conditions, sample_training_noise, sampling_fn
from ditcore.processes import build_process

GUIDANCE_KEY = "guidance"  # the model keyword (and generation `cond` entry) that carries w


@dataclasses.dataclass(frozen=True)
class GuidanceRange:
    """Guidance scales the student is trained on: w ~ U[w_min, w_max]."""

    w_min: float = 1.0
    w_max: float = 7.0

    def __post_init__(self) -> None:
        if not (self.w_min >= 0.0 and self.w_max >= self.w_min and math.isfinite(self.w_max)):
            raise ValueError(f"guidance range must satisfy 0 <= w_min <= w_max < inf, got [{self.w_min}, {self.w_max}]")

    def sample(self, n: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
        """[n] scales drawn uniformly (on the generator's device, moved to `device`)."""
        gdev = generator.device if generator is not None else "cpu"
        u = torch.rand(n, generator=generator, device=gdev, dtype=torch.float32).to(device)
        return self.w_min + (self.w_max - self.w_min) * u


def student_model_config(teacher_model_config: dict) -> dict:
    """The student's model config dict: the teacher's with guidance_embed=True (dit and mmdit)."""
    arch = teacher_model_config.get("arch")
    if arch not in ("dit", "mmdit"):
        raise ValueError(f"guidance distillation supports arch 'dit' and 'mmdit', the teacher is {arch!r}")
    if teacher_model_config.get("guidance_embed"):
        raise ValueError("the teacher is already guidance-distilled (model.guidance_embed is true)")
    return {**teacher_model_config, "guidance_embed": True}


def is_distilled(model: nn.Module) -> bool:
    """Whether a model takes the guidance scale as an input (a distilled student)."""
    return bool(getattr(getattr(model, "config", None), "guidance_embed", False))


def load_teacher_weights(student: nn.Module, teacher_state: dict[str, torch.Tensor]) -> None:
    """Copy the teacher's weights into the student; only the guidance embedder (already zero-initialised) is new."""
    result = student.load_state_dict(teacher_state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("g_embedder.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"teacher weights do not fit the student: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def guided_prediction(
    model_fn: Callable[..., torch.Tensor],
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: dict[str, torch.Tensor],
    uncond: dict[str, torch.Tensor],
    w: torch.Tensor,
) -> torch.Tensor:
    """u + w (c - u) with per-sample w [B]: conditional and unconditional halves in one batched call."""
    b = x_t.shape[0]
    both = {k: torch.cat([v, uncond[k]]) for k, v in cond.items()}
    out = model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), **both)  # [2B, C, H, W]
    c, u = out[:b].float(), out[b:].float()
    return u + w.float().reshape(b, *([1] * (x_t.dim() - 1))) * (c - u)


def distillation_loss(
    student: nn.Module,
    teacher: nn.Module,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor],
    null_cond: dict[str, torch.Tensor],
    cfg: ObjectiveConfig,
    generator: torch.Generator | None,
    guidance: GuidanceRange,
) -> torch.Tensor:
    """MSE between student(x_t, t, cond, guidance=w) and the teacher's CFG prediction at w (scalar tensor).

    t and eps are drawn as the teacher's objective draws them; w ~ guidance per sample; the teacher runs without
    gradients. `null_cond` is the unconditional input (null class or empty-prompt embedding), broadcast per sample.
    """
    process = build_process(cfg.process)
    b = x0.shape[0]
    t, eps = sample_training_noise(cfg, process, x0, generator)  # [B], [B, C, H, W]: the teacher's draws
    t = t.to(x0.dtype)
    shape = (b,) + (1,) * (x0.dim() - 1)
    x_t = process.alpha(t).reshape(shape).to(x0.dtype) * x0 + process.sigma(t).reshape(shape).to(x0.dtype) * eps
    w = guidance.sample(b, generator, x0.device)  # [B]
    uncond = drop_conditions(cond, null_cond, 1.0)  # every row replaced by the null condition
    teacher_fn, _ = sampling_fn(teacher, cfg)
    student_fn, _ = sampling_fn(student, cfg)
    with torch.no_grad():
        target = guided_prediction(teacher_fn, x_t, t, cond, uncond, w)
    pred = student_fn(x_t, t, **cond, **{GUIDANCE_KEY: w})
    return torch.mean((pred.float() - target) ** 2)
