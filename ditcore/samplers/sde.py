"""Reverse-SDE sampling of interpolants with a free diffusion coefficient (SiT, Ma et al. 2024, Sec. 3 "sampling").

For x_t = alpha_t x0 + sigma_t eps every w_t >= 0 gives an SDE with the marginals of the interpolant, integrated from
noise (t = 1) to data (t = 0):

    dX_t = [v(X_t, t) - 1/2 w_t s(X_t, t)] dt + sqrt(w_t) dW_bar_t,

with the velocity v = alpha'_t x0_hat + sigma'_t eps_hat and the score s = -eps_hat / sigma_t, both from the model's
prediction (Fokker-Planck: the 1/2 w_t s drift and the diffusion cancel). w_t = 0 is the PF-ODE; w_t is chosen at
sampling time. The forms follow SiT's `diffusion_form` (its code scales the noise as sqrt(2 D_t), so w_t = 2 D_t):

    "sigma"      D_t = norm * sigma_t                  (SiT's default)
    "sbdm"       D_t = norm * sigma_t (sigma'_t - alpha'_t / alpha_t sigma_t)  (= g_t^2 / 2: with norm = 1 the
                 reverse SDE of the score-based diffusion model with the same marginals; infinite where alpha = 0)
    "constant"   D_t = norm
    "linear"     D_t = norm * t
    "decreasing" D_t = (1 - norm cos(pi t))^2 / 4       (SiT's cos form in its reversed time 1 - t)
    "increasing-decreasing"  D_t = norm * sin(pi t)^2

Steps are Euler-Maruyama on the grid; the last interval into sigma = 0 is a selectable last step (SiT's
`last_step`): "mean" (the drift step without noise, SiT's default), "tweedie" (x0_hat = (x + sigma^2 s) / alpha)
or "euler" (a probability-flow Euler step). Noise rows come from per-sample generators (batch-independent).
"""

from __future__ import annotations

import itertools
import math

import torch

from ditcore.processes import Process
from ditcore.samplers.grids import GridPoint, grid_point
from ditcore.samplers.guidance import Denoiser, randn_per_sample

DIFFUSION_FORMS = ("sigma", "sbdm", "constant", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("mean", "tweedie", "euler")


def diffusion_coefficient(p: GridPoint, form: str = "sigma", norm: float = 1.0) -> float:
    """w_t = 2 D_t at grid point p for SiT's diffusion form (see module docstring); may be inf ("sbdm", alpha = 0)."""
    if form == "sigma":
        d = norm * p.sigma
    elif form == "sbdm":
        if p.alpha == 0.0:
            return math.inf
        d = norm * p.sigma * (p.d_sigma - p.d_alpha / p.alpha * p.sigma)
    elif form == "constant":
        d = norm
    elif form == "linear":
        d = norm * p.t
    elif form == "decreasing":
        d = 0.25 * (1.0 - norm * math.cos(math.pi * p.t)) ** 2
    elif form == "increasing-decreasing":
        d = norm * math.sin(math.pi * p.t) ** 2
    else:
        raise ValueError(f"unknown SDE diffusion form {form!r}; expected one of {', '.join(DIFFUSION_FORMS)}")
    if d < 0:
        raise ValueError(f"diffusion form {form!r} with norm {norm} is negative at t={p.t}")
    return 2.0 * d


def sample_sde(
    denoise: Denoiser,
    x: torch.Tensor,
    ts: torch.Tensor,
    process: Process,
    *,
    diffusion: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step: str = "mean",
    generators: list[torch.Generator] | None = None,
    **_: object,
) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE along ts (decreasing, last = clean); one model evaluation per step."""
    if last_step not in LAST_STEPS:
        raise ValueError(f"unknown SDE last step {last_step!r}; expected one of {', '.join(LAST_STEPS)}")
    if not math.isfinite(diffusion_norm):  # else named below as an infinite diffusion at t_max
        raise ValueError(f"sde_diffusion_norm must be a finite number, got {diffusion_norm!r}")
    points = [grid_point(process, float(t)) for t in ts]
    for p in points[:-1]:
        if not math.isfinite(diffusion_coefficient(p, diffusion, diffusion_norm)):
            raise ValueError(
                f"SDE diffusion {diffusion!r} is infinite at t={p.t} (alpha = 0); start below t_max "
                "(t_start) or choose another form"
            )
    for cur, nxt in itertools.pairwise(points):
        x0, eps = denoise(x, cur.t)
        dt = nxt.t - cur.t  # < 0: integrating from noise to data
        velocity = cur.d_alpha * x0 + cur.d_sigma * eps
        if nxt.sigma == 0.0 and last_step == "tweedie":
            x = x0  # E[x0 | x_t] = (x_t + sigma^2 s) / alpha
            continue
        if nxt.sigma == 0.0 and last_step == "euler":
            x = x + dt * velocity
            continue
        w = diffusion_coefficient(cur, diffusion, diffusion_norm)
        # -1/2 w s = +1/2 w eps_hat / sigma; the drift is applied with dt < 0 (reverse time)
        drift = velocity + 0.5 * w * eps / cur.sigma
        x = x + dt * drift
        if nxt.sigma > 0.0:  # "mean" last step: the same drift, no noise
            x = x + math.sqrt(w * -dt) * randn_per_sample(x, generators)
    return x
