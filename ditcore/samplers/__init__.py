"""Samplers: one entry point `sample(model_fn, noise, *, process, prediction, sampler, steps, ...)`.

`model_fn(x_t [B,...], t [B], **cond) -> prediction` is any callable with a declared prediction type
("eps" | "v" | "x0" | "velocity"), so the same code samples a trained network and an analytic denoiser.
Solvers work on (x0_hat, eps_hat) converted from the prediction, for every process in ditcore.processes.
"ddpm-learned" is the exception: its model_fn returns [prediction; variance output] (learn_sigma, 2C channels).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ditcore.processes import Process, build_process, check_prediction
from ditcore.samplers.ddim import sample_ddim
from ditcore.samplers.ddpm import sample_ddpm
from ditcore.samplers.dpm_solver import sample_dpmpp_2s, sample_dpmpp_multistep
from ditcore.samplers.dpm_solver_v3 import sample_dpmsolver_v3
from ditcore.samplers.ems import EMS, EMSEstimator, ems_lambdas, estimate_ems
from ditcore.samplers.grids import EDM_SIGMA_MAX, TIME_GRIDS, custom_grid, default_grid_kind, time_grid
from ditcore.samplers.guidance import Denoiser, randn_per_sample
from ditcore.samplers.ode import sample_euler, sample_heun
from ditcore.samplers.sde import DIFFUSION_FORMS, LAST_STEPS, sample_sde

SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp-2m", "dpmpp-3m", "dpmpp-2s", "dpmsolver-v3", "sde", "ddpm-learned")
STOCHASTIC_SAMPLERS = ("ddpm", "ddim", "sde", "ddpm-learned")  # ddim only when eta > 0
# samplers that need more than model_fn and noise: "ems" = sample(..., ems=EMS), "learn_sigma" = a model_fn that
# returns [prediction; variance output] (model_fn_from_model(model, learn_sigma=True)) on a variance-preserving process
SAMPLER_EXTRA_INPUTS = {"dpmsolver-v3": "ems", "ddpm-learned": "learn_sigma"}

__all__ = [
    "DIFFUSION_FORMS",
    "EMS",
    "LAST_STEPS",
    "SAMPLERS",
    "SAMPLER_EXTRA_INPUTS",
    "STOCHASTIC_SAMPLERS",
    "TIME_GRIDS",
    "Denoiser",
    "EMSEstimator",
    "default_grid_kind",
    "ems_lambdas",
    "estimate_ems",
    "make_generators",
    "model_fn_from_model",
    "noise_from_seeds",
    "randn_per_sample",
    "sample",
    "start_time",
    "time_grid",
]


def model_fn_from_model(model: torch.nn.Module, learn_sigma: bool = False) -> Callable[..., torch.Tensor]:
    """Wrap a ditcore model as model_fn(x_t, t, **cond): the prediction channels, or with learn_sigma=True the
    full [prediction; variance] output that sampler="ddpm-learned" needs."""
    channels = getattr(model, "in_channels", None)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        out = model(x_t, t, **cond)  # [B, C_out, H, W]
        c = channels if channels is not None else x_t.shape[1]
        if learn_sigma:
            if out.shape[1] != 2 * c:
                raise ValueError(
                    f"learn_sigma=True needs a model with 2C = {2 * c} output channels, got {out.shape[1]}"
                )
            return out
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
    time_grid: str | torch.Tensor | Sequence[float] = "default",
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
    ems: EMS | dict | None = None,
    v3_order: int | None = None,
    v3_corrector: bool = True,
    sde_diffusion: str = "sigma",
    sde_diffusion_norm: float = 1.0,
    sde_last_step: str = "mean",
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Integrate from noise (standard normal [B, ...]) at t_start to clean data; returns x0 [B, ...].

    sampler: one of SAMPLERS ("ddim" uses `eta`; "ddpm" is ancestral). time_grid: "default" (=
    default_grid_kind(process, sampler): "uniform-lambda" for the DPM-Solver family on vp-linear and edm-ve, "edm"
    for the other samplers on edm-ve, else "uniform-t"), "uniform-t", "uniform-lambda", "edm" (`rho`), "sd3-shift"
    (`grid_shift`), or explicit times (decreasing, t_start .. t_clean; `steps` is then ignored). Classifier-free
    guidance with scale `guidance` uses `uncond` (same keys as cond, batched or unbatched), optionally only for t
    inside `guidance_interval` = (lo, hi). `generators`: one per sample for stochastic samplers, so a sample depends
    only on its own noise row and generator. The state starts as sqrt(alpha^2 + sigma^2) * noise at t_start (= noise
    at t_max on the variance-preserving and interpolant paths; EDM's sigma_max-scaled prior on edm-ve). With
    return_nfe, also returns the model-call count.

    "dpmsolver-v3" needs `ems` (EMS or its dict, ditcore/samplers/ems.py); `v3_order` (default 3 without
    guidance, 2 with it, the paper's recommendation) and `v3_corrector`. "sde": SiT's reverse SDE with
    `sde_diffusion` (one of DIFFUSION_FORMS), `sde_diffusion_norm` and `sde_last_step` (one of LAST_STEPS).
    "ddpm-learned": ancestral sampling with the learned variance; model_fn returns [prediction; variance output]
    (model_fn_from_model(model, learn_sigma=True)); variance-preserving processes only.
    """
    proc = build_process(process)
    check_prediction(prediction)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if generators is not None and len(generators) != noise.shape[0]:
        raise ValueError(f"need one generator per sample: got {len(generators)} for batch {noise.shape[0]}")
    if sampler == "dpmsolver-v3" and ems is None:
        raise ValueError("sampler 'dpmsolver-v3' needs ems= (estimate them with ditcore.samplers.estimate_ems)")
    if sampler == "sde" and sde_diffusion not in DIFFUSION_FORMS:
        raise ValueError(f"unknown sde_diffusion {sde_diffusion!r}; expected one of {', '.join(DIFFUSION_FORMS)}")
    if sampler == "sde" and sde_last_step not in LAST_STEPS:
        raise ValueError(f"unknown sde_last_step {sde_last_step!r}; expected one of {', '.join(LAST_STEPS)}")
    if isinstance(time_grid, str):
        t0 = start_time(proc, prediction) if t_start is None else float(t_start)
        ts = time_grid_fn(proc, steps, time_grid, t_start=t0, shift=grid_shift, rho=rho, sampler=sampler)
    else:
        ts = custom_grid(proc, time_grid, t_start=t_start)
        t0 = float(ts[0])
    denoise = Denoiser(model_fn, proc, prediction, cond, uncond, guidance, guidance_interval)
    a0, s0 = proc.coefficients(t0)[:2]
    x = noise * math.sqrt(a0 * a0 + s0 * s0)  # marginal scale of unit-variance data at t0
    if sampler == "ddpm":
        out = sample_ddpm(denoise, x, ts, proc, generators=generators)
    elif sampler == "ddpm-learned":
        out = sample_ddpm(denoise, x, ts, proc, generators=generators, learned_variance=True)
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
    elif sampler == "dpmsolver-v3":
        stats = ems if isinstance(ems, EMS) else EMS.from_dict(ems)
        order = v3_order if v3_order is not None else (2 if denoise.uncond is not None else 3)
        out = sample_dpmsolver_v3(denoise, x, ts, proc, ems=stats, order=order, corrector=v3_corrector)
    elif sampler == "sde":
        out = sample_sde(
            denoise,
            x,
            ts,
            proc,
            diffusion=sde_diffusion,
            diffusion_norm=sde_diffusion_norm,
            last_step=sde_last_step,
            generators=generators,
        )
    else:
        out = sample_dpmpp_2s(denoise, x, ts, proc)
    return (out, denoise.nfe) if return_nfe else out


time_grid_fn = time_grid  # `sample` has a keyword argument named time_grid
