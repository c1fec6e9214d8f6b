"""Training objectives: noise the data with a process, regress the model onto the prediction target.

`loss` is a pure function of (model, x0, cond, generator, cfg, null_cond): all randomness comes from the
generator, so a training step is reproducible. Classifier-free-guidance condition dropout happens here
(per sample, condition -> null condition); guidance itself lives in the sampler.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ditcore.processes import (
    PREDICTIONS,
    build_process,
    check_prediction,
    prediction_target,
)
from ditcore.timesteps import T_SAMPLERS, sample_t


@dataclasses.dataclass
class ObjectiveConfig:
    """Which process, prediction target, timestep distribution and CFG dropout rate to train with."""

    process: str = "flow"
    prediction: str = "velocity"  # "velocity" | "eps" | "v" | "x0"
    t_sampler: str = "uniform"  # "uniform" | "logit-normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_shift: float = 1.0  # SD3 shift applied after sampling t (1.0 = none); see timesteps.resolution_shift
    cond_dropout: float = 0.1

    def __post_init__(self) -> None:
        build_process(self.process)  # raises naming the bad process
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"objective.prediction: unknown {self.prediction!r}; expected one of {PREDICTIONS}")
        if self.t_sampler not in T_SAMPLERS:
            raise ValueError(f"objective.t_sampler: unknown {self.t_sampler!r}; expected one of {T_SAMPLERS}")
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ValueError(f"objective.cond_dropout must be in [0, 1], got {self.cond_dropout}")
        if self.time_shift <= 0:
            raise ValueError(f"objective.time_shift must be > 0, got {self.time_shift}")
        if self.logit_std <= 0:
            raise ValueError(f"objective.logit_std must be > 0, got {self.logit_std}")


def _randn(shape: torch.Size | tuple, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal drawn on the generator's device, moved to `like` (same result on CPU and GPU)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def _bshape(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ...] matching value's rank."""
    return mask.reshape(mask.shape[0], *([1] * (value.dim() - 1)))


def drop_conditions(
    cond: dict[str, torch.Tensor],
    null_cond: dict[str, torch.Tensor | int | float],
    p: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Replace each sample's condition by the null condition with probability p (CFG training).

    Class models: {"y": num_classes}. Text models: {"text_emb": [L,D], "text_mask": [L], "text_pooled": [Dp]}
    (the empty-prompt embedding and its mask), broadcast per sample. One Bernoulli draw per sample, shared by
    all keys so a dropped sample loses its whole condition.
    """
    if p <= 0.0 or not cond:
        return dict(cond)
    missing = [k for k in cond if k not in null_cond]
    if missing:
        raise KeyError(f"null_cond has no entry for condition key(s) {missing}; got keys {sorted(null_cond)}")
    batch = next(iter(cond.values())).shape[0]
    gen_device = generator.device if generator is not None else "cpu"
    drop = torch.rand(batch, generator=generator, device=gen_device) < p  # [B]
    out = {}
    for key, value in cond.items():
        null = torch.as_tensor(null_cond[key], device=value.device).to(value.dtype)
        if null.dim() == value.dim() - 1:
            null = null.unsqueeze(0)
        if null.dim() != value.dim():
            raise ValueError(
                f"null_cond[{key!r}] has shape {tuple(null.shape)}, incompatible with condition shape {tuple(value.shape)}"
            )
        null = null.expand_as(value)
        out[key] = torch.where(_bshape(drop.to(value.device), value), null, value)
    return out


def _predict(model: Callable, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """Model output restricted to the prediction channels (learn_sigma models output 2C, prediction first)."""
    out = model(x_t, t, **cond)
    if out.shape[1] != x_t.shape[1]:
        out = out[:, : x_t.shape[1]]
    return out


def loss(
    model: Callable,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    generator: torch.Generator | None,
    cfg: ObjectiveConfig,
    null_cond: dict[str, torch.Tensor | int | float] | None = None,
) -> torch.Tensor:
    """Mean-squared error between model(x_t, t, **cond) and the cfg.prediction target (scalar tensor)."""
    process = build_process(cfg.process)
    check_prediction(cfg.prediction)
    batch = x0.shape[0]
    t = sample_t(
        batch,
        kind=cfg.t_sampler,
        generator=generator,
        logit_mean=cfg.logit_mean,
        logit_std=cfg.logit_std,
        shift=cfg.time_shift,
        t_min=process.t_min,
        t_max=process.t_max,
        device=x0.device,
    )  # [B]
    eps = _randn(x0.shape, generator, x0)  # [B, C, H, W]
    a = _bshape(process.alpha(t), x0).to(x0.dtype)
    s = _bshape(process.sigma(t), x0).to(x0.dtype)
    x_t = a * x0 + s * eps  # [B, C, H, W]
    cond = dict(cond or {})
    if null_cond is not None and cfg.cond_dropout > 0:
        cond = drop_conditions(cond, null_cond, cfg.cond_dropout, generator)
    target = prediction_target(process, cfg.prediction, x0, eps, t.to(x0.dtype))  # [B, C, H, W]
    pred = _predict(model, x_t, t.to(x0.dtype), cond)  # [B, C, H, W]
    return torch.mean((pred.float() - target.float()) ** 2)


@torch.no_grad()
def validation_loss(
    model: Callable,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    cfg: ObjectiveConfig,
    num_t: int = 8,
    seed: int = 0,
) -> float:
    """Deterministic loss: num_t evenly spaced t (bin midpoints), fixed noise from `seed`, no CFG dropout.

    Uniform weighting over t regardless of cfg.t_sampler, so curves of runs with different training-time
    samplers stay comparable.
    """
    if num_t < 1:
        raise ValueError(f"num_t must be >= 1, got {num_t}")
    process = build_process(cfg.process)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        total = 0.0
        for k in range(num_t):
            u = (k + 0.5) / num_t
            t_val = process.t_min + (process.t_max - process.t_min) * u
            t = torch.full((x0.shape[0],), t_val, dtype=x0.dtype, device=x0.device)  # [B]
            eps = _randn(x0.shape, generator, x0)  # [B, C, H, W]
            a = _bshape(process.alpha(t), x0)
            s = _bshape(process.sigma(t), x0)
            x_t = a * x0 + s * eps
            target = prediction_target(process, cfg.prediction, x0, eps, t)
            pred = _predict(model, x_t, t, dict(cond or {}))
            total += float(torch.mean((pred.float() - target.float()) ** 2))
        return total / num_t
    finally:
        if was_training:
            model.train()
