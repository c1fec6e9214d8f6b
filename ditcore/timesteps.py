"""Training-time timestep samplers: uniform, logit-normal (SD3) and the resolution-dependent time shift."""

from __future__ import annotations

import math

import torch

T_SAMPLERS = ("uniform", "logit-normal")


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 eq. 23 shift t' = s t / (1 + (s - 1) t): s > 1 moves mass toward noise (t = 1); fixes 0 and 1."""
    if shift <= 0:
        raise ValueError(f"time_shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(num_tokens: int, base_tokens: int = 256) -> float:
    """Resolution-dependent shift sqrt(m / n) (SD3 sec. 5.3.2): m tokens at target size, n at the base size."""
    if num_tokens <= 0 or base_tokens <= 0:
        raise ValueError(f"token counts must be positive, got num_tokens={num_tokens}, base_tokens={base_tokens}")
    return math.sqrt(num_tokens / base_tokens)


def sample_t(
    batch: int,
    *,
    kind: str = "uniform",
    generator: torch.Generator | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    t_min: float = 0.0,
    t_max: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw training times t [batch] (float32) from `kind`, then time-shift, then map into [t_min, t_max]."""
    gen_device = generator.device if generator is not None else "cpu"
    if kind == "uniform":
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=gen_device)
    elif kind == "logit-normal":
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        n = torch.randn(batch, generator=generator, dtype=torch.float64, device=gen_device)
        u = torch.sigmoid(logit_mean + logit_std * n)
    else:
        raise ValueError(f"unknown t_sampler {kind!r}; expected one of {', '.join(T_SAMPLERS)}")
    u = time_shift(u, shift)
    t = t_min + (t_max - t_min) * u
    return t.to(dtype=torch.float32, device=device if device is not None else gen_device)
