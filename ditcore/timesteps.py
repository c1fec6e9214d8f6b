"""Training-time timestep samplers: uniform, logit-normal (SD3), EDM's log-normal sigma, and the time shift."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ditcore.processes import Process

T_SAMPLERS = ("uniform", "logit-normal", "log-normal")
U_SAMPLERS = ("uniform", "logit-normal")  # the samplers that draw a quantile u in [0, 1] (see TimeSampler.quantiles)


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 eq. 23 shift t' = s t / (1 + (s - 1) t): s > 1 moves mass toward noise (t = 1); fixes 0 and 1."""
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"time_shift must be a finite number > 0, got {shift!r}")
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(num_tokens: int, base_tokens: int = 256) -> float:
    """Resolution-dependent shift sqrt(m / n) (SD3 sec. 5.3.2): m tokens at target size, n at the base size."""
    if num_tokens <= 0 or base_tokens <= 0:
        raise ValueError(f"token counts must be positive, got num_tokens={num_tokens}, base_tokens={base_tokens}")
    return math.sqrt(num_tokens / base_tokens)


def sample_log_sigma(
    batch: int, *, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """EDM training noise levels: ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1); float64 [batch]."""
    if not (math.isfinite(p_std) and p_std > 0):
        raise ValueError(f"p_std must be a finite number > 0, got {p_std!r}")
    gen_device = generator.device if generator is not None else "cpu"
    n = torch.randn(batch, generator=generator, dtype=torch.float64, device=gen_device)
    return p_mean + p_std * n


@dataclass(frozen=True)
class TimeSampler:
    """The training-time distribution: `kind` with its parameters, then the SD3 time shift.

    "uniform" and "logit-normal" (SD3, `logit_mean`, `logit_std`) draw a quantile u in [0, 1] that is time-shifted
    and mapped into the process's time range; "log-normal" draws EDM's noise-to-signal ratio (`p_mean`, `p_std`).
    """

    kind: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def quantiles(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Quantiles u [batch] in [0, 1] (float64, on the generator's device) from `kind`, then time-shifted."""
        gen_device = generator.device if generator is not None else "cpu"
        if self.kind == "uniform":
            u = torch.rand(batch, generator=generator, dtype=torch.float64, device=gen_device)
        elif self.kind == "logit-normal":
            if not (math.isfinite(self.logit_std) and self.logit_std > 0):
                raise ValueError(f"logit_std must be a finite number > 0, got {self.logit_std!r}")
            n = torch.randn(batch, generator=generator, dtype=torch.float64, device=gen_device)
            u = torch.sigmoid(self.logit_mean + self.logit_std * n)
        else:
            raise ValueError(f"unknown quantile sampler {self.kind!r}; expected one of {', '.join(U_SAMPLERS)}")
        return time_shift(u, self.shift)

    def times(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        *,
        t_min: float = 0.0,
        t_max: float = 1.0,
        device: torch.device | str | None = None,
        process: Process | None = None,
    ) -> torch.Tensor:
        """Training times t [batch] (float32) from `kind`, then time-shifted, then mapped into [t_min, t_max].

        kind "log-normal" draws the noise-to-signal ratio sigma_t / alpha_t log-normally and maps it to t through
        `process` (required), clamped to [t_min, t_max]; it takes no time shift.
        """
        gen_device = generator.device if generator is not None else "cpu"
        out_device = device if device is not None else gen_device
        if self.kind == "log-normal":
            if process is None:
                raise ValueError("t_sampler 'log-normal' draws sigma/alpha and needs the process to map it to t")
            if self.shift != 1.0:
                raise ValueError(
                    f"t_sampler 'log-normal' takes no time shift (got shift={self.shift}); move p_mean instead"
                )
            log_sigma = sample_log_sigma(batch, p_mean=self.p_mean, p_std=self.p_std, generator=generator)
            t = process.t_from_log_snr(-log_sigma).clamp(t_min, t_max)  # lambda = log(alpha/sigma) = -ln(sigma/alpha)
            return t.to(dtype=torch.float32, device=out_device)
        if self.kind not in U_SAMPLERS:
            raise ValueError(f"unknown t_sampler {self.kind!r}; expected one of {', '.join(T_SAMPLERS)}")
        t = t_min + (t_max - t_min) * self.quantiles(batch, generator)
        return t.to(dtype=torch.float32, device=out_device)
