"""DDPM ancestral sampling (Ho et al. 2020): draw x_n ~ q(x_n | x_i, x0 = x0_hat) at every step.

For any process, with a = alpha_i / alpha_n and s^2 = sigma_i^2 - a^2 sigma_n^2 (the forward transition
x_i | x_n), the Gaussian posterior is
    mean = (a sigma_n^2 / sigma_i^2) x_i + (alpha_n s^2 / sigma_i^2) x0,   var = s^2 sigma_n^2 / sigma_i^2
(DDPM eq. 6-7 in (alpha, sigma) form). On the full 1000-step vp-linear grid this is the original sampler.

Learned variance (improved DDPM, Nichol & Dhariwal 2021, Eq. 15; used by ADM and DiT): for a variance-preserving
process s^2 is the step's beta and the posterior variance is beta_tilde; a learn_sigma network outputs v per
dimension and the reverse step uses Sigma = exp(v log beta + (1 - v) log beta_tilde), with ADM's map v = (o + 1)/2
of the raw output o in [-1, 1]. On a respaced grid beta and beta_tilde are those of the respaced step, as in ADM.
"""

from __future__ import annotations

import math

import torch

from ditcore.processes import Process
from ditcore.samplers.grids import GridPoint
from ditcore.samplers.guidance import Denoiser, randn_per_sample
from ditcore.samplers.stepping import grid_points, walk_grid


def posterior(cur: GridPoint, nxt: GridPoint) -> tuple[float, float, float, float]:
    """(coefficient of x_i, coefficient of x0, beta_tilde = posterior variance, beta = s^2) for the step cur -> nxt."""
    a = cur.alpha / nxt.alpha
    s2 = max(0.0, cur.sigma**2 - (a * nxt.sigma) ** 2)
    coef_x = a * nxt.sigma**2 / cur.sigma**2
    coef_x0 = nxt.alpha * s2 / cur.sigma**2
    return coef_x, coef_x0, s2 * nxt.sigma**2 / cur.sigma**2, s2


def learned_log_variance(cur: GridPoint, nxt: GridPoint, o: torch.Tensor) -> torch.Tensor:
    """log Sigma = v log beta + (1 - v) log beta_tilde with v = (o + 1) / 2 (iDDPM Eq. 15, ADM's output map)."""
    _, _, var_tilde, beta = posterior(cur, nxt)
    if var_tilde <= 0.0 or beta <= 0.0:
        raise ValueError(f"learned variance is undefined on the step t={cur.t} -> {nxt.t} (beta or beta_tilde = 0)")
    v = (o.to(torch.float64) + 1.0) / 2.0
    return v * math.log(beta) + (1.0 - v) * math.log(var_tilde)


def sample_ddpm(
    denoise: Denoiser,
    x: torch.Tensor,
    ts: torch.Tensor,
    process: Process,
    *,
    generators: list[torch.Generator] | None = None,
    learned_variance: bool = False,
) -> torch.Tensor:
    """Ancestral sampling along the grid ts (decreasing, last = clean).

    The step's variance is the posterior's beta_tilde, or with `learned_variance` the network's (iDDPM Eq. 15:
    `denoise.with_variance` returns [prediction; o], 2C channels; variance-preserving processes only). The last step
    takes x0_hat: the posterior at alpha_bar_prev = 1 is a point mass on x0 (ADM's nonzero_mask)."""
    points = grid_points(process, ts)
    if not learned_variance:

        def step(cur, nxt, x, x0, _):
            coef_x, coef_x0, var, _ = posterior(cur, nxt)
            return coef_x * x + coef_x0 * x0 + math.sqrt(var) * randn_per_sample(x, generators)

        return walk_grid(denoise, x, points, step)
    for p in points:
        if abs(p.alpha**2 + p.sigma**2 - 1.0) > 1e-9:
            raise ValueError(
                f"ddpm-learned needs a variance-preserving process (alpha^2 + sigma^2 = 1); "
                f"{process.name!r} has {p.alpha**2 + p.sigma**2:.6g} at t={p.t}"
            )

    def learned_step(cur, nxt, x, x0, _, o):
        coef_x, coef_x0, _, _ = posterior(cur, nxt)
        std = torch.exp(0.5 * learned_log_variance(cur, nxt, o)).to(x.dtype)
        return coef_x * x + coef_x0 * x0 + std * randn_per_sample(x, generators)

    return walk_grid(denoise.with_variance, x, points, learned_step)
