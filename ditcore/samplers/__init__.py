"""Samplers: one entry point `sample(model_fn, noise, *, process, prediction, sampler, steps, ...)`.

`model_fn(x_t [B,...], t [B], **cond) -> prediction` is any callable with a declared prediction type
("eps" | "v" | "x0" | "velocity"), so the same code samples a trained network and an analytic denoiser.
Solvers work on (x0_hat, eps_hat) converted from the prediction, for every process in ditcore.processes.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ditcore.processes import Process, build_process, check_prediction
from ditcore.samplers.ddim import sample_ddim
from ditcore.samplers.ddpm import sample_ddpm
from ditcore.samplers.dpm_solver import sample_dpmpp_2s, sample_dpmpp_multistep
from ditcore.samplers.grids import EDM_SIGMA_MAX, TIME_GRIDS, time_grid
from ditcore.samplers.guidance import Denoiser, randn_per_sample
from ditcore.samplers.ode import sample_euler, sample_heun

SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp-2m", "dpmpp-3m", "dpmpp-2s")
STOCHASTIC_SAMPLERS = ("ddpm", "ddim")  # ddim only when eta > 0

__all__ = [
    "SAMPLERS",
    "TIME_GRIDS",
    "Denoiser",
    "make_generators",
    "model_fn_from_model",
    "noise_from_seeds",
    "randn_per_sample",
    "sample",
    "start_time",
    "time_grid",
]


def model_fn_from_model(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """Wrap a ditcore model as model_fn(x_t, t, **cond), keeping only the prediction channels (learn_sigma)."""
    channels = getattr(model, "in_channels", None)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        out = model(x_t, t, **cond)  # [B, C_out, H, W]
        c = channels if channels is not None else x_t.shape[1]
        return out[:, :c] if out.shape[1] != c else out  # learn_sigma: prediction is the first C channels

    return model_fn


def make_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One torch.Generator per sample, seeded independently."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def noise_from_seeds(
    seeds: Sequence[int], shape: Sequence[int], *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> torch.Tensor:
    """Initial noise [len(seeds), *shape] where row i depends only on seeds[i] (drawn on CPU)."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


def start_time(process: Process, prediction: str) -> float:
    """Where sampling starts: process.t_max, except eps-prediction on a path with alpha(t_max) = 0
    (x0 is not recoverable from eps there), which starts at the EDM noise level sigma/alpha = 80."""
    t_max = float(process.t_max)
    if prediction == "eps" and float(process.alpha(torch.tensor(t_max, dtype=torch.float64))) == 0.0:
        return float(process.t_from_log_snr(torch.tensor(-math.log(EDM_SIGMA_MAX), dtype=torch.float64)))
    return t_max


@torch.no_grad()
def sample(
    model_fn: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    *,
    process: str | Process,
    prediction: str,
    sampler: str = "dpmpp-2m",
    steps: int = 20,
    time_grid: str = "default",
    cond: dict | None = None,
    uncond: dict | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    generators: list[torch.Generator] | None = None,
    eta: float = 0.0,
    grid_shift: float = 3.0,
    rho: float = 7.0,
    t_start: float | None = None,
    return_nfe: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Integrate from noise (standard normal [B, ...]) at t_start to clean data; returns x0 [B, ...].

    sampler: one of SAMPLERS ("ddim" uses `eta`; "ddpm" is ancestral). time_grid: "default" (= uniform-t),
    "uniform-t", "uniform-lambda", "edm" (`rho`), "sd3-shift" (`grid_shift`). Classifier-free guidance with
    scale `guidance` uses `uncond` (same keys as cond, batched or unbatched), optionally only for t inside
    `guidance_interval` = (lo, hi). `generators`: one per sample for stochastic samplers, so a sample depends
    only on its own noise row and generator. The state starts as sqrt(alpha^2 + sigma^2) * noise at t_start
    (= noise at t_max for every built-in process). With return_nfe, also returns the model-call count.
    """
    proc = build_process(process)
    check_prediction(prediction)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if generators is not None and len(generators) != noise.shape[0]:
        raise ValueError(f"need one generator per sample: got {len(generators)} for batch {noise.shape[0]}")
    t0 = start_time(proc, prediction) if t_start is None else float(t_start)
    ts = time_grid_fn(proc, steps, time_grid, t_start=t0, shift=grid_shift, rho=rho)
    denoise = Denoiser(model_fn, proc, prediction, cond, uncond, guidance, guidance_interval)
    a0, s0 = proc.coefficients(t0)[:2]
    x = noise * math.sqrt(a0 * a0 + s0 * s0)  # marginal scale of unit-variance data at t0
    if sampler == "ddpm":
        out = sample_ddpm(denoise, x, ts, proc, generators=generators)
    elif sampler == "ddim":
        out = sample_ddim(denoise, x, ts, proc, eta=eta, generators=generators)
    elif sampler == "euler":
        out = sample_euler(denoise, x, ts, proc)
    elif sampler == "heun":
        out = sample_heun(denoise, x, ts, proc)
    elif sampler == "dpmpp-2m":
        out = sample_dpmpp_multistep(denoise, x, ts, proc, order=2)
    elif sampler == "dpmpp-3m":
        out = sample_dpmpp_multistep(denoise, x, ts, proc, order=3)
    else:
        out = sample_dpmpp_2s(denoise, x, ts, proc)
    return (out, denoise.nfe) if return_nfe else out


time_grid_fn = time_grid  # `sample` has a keyword argument named time_grid
