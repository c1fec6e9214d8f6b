"""DDPM ancestral sampling (Ho et al. 2020): draw x_n ~ q(x_n | x_i, x0 = x0_hat) at every step.

For any process, with a = alpha_i / alpha_n and s^2 = sigma_i^2 - a^2 sigma_n^2 (the forward transition
x_i | x_n), the Gaussian posterior is
    mean = (a sigma_n^2 / sigma_i^2) x_i + (alpha_n s^2 / sigma_i^2) x0,   var = s^2 sigma_n^2 / sigma_i^2
(DDPM eq. 6-7 in (alpha, sigma) form). On the full 1000-step vp-linear grid this is the original sampler.
"""

from __future__ import annotations

import math

import torch

from ditcore.processes import Process
from ditcore.samplers.grids import grid_point
from ditcore.samplers.guidance import Denoiser, randn_per_sample


def sample_ddpm(
    denoise: Denoiser,
    x: torch.Tensor,
    ts: torch.Tensor,
    process: Process,
    *,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Ancestral sampling along the grid ts (decreasing, last = clean)."""
    points = [grid_point(process, float(t)) for t in ts]
    for cur, nxt in zip(points[:-1], points[1:]):
        x0, _ = denoise(x, cur.t)
        if nxt.sigma == 0.0:
            x = x0  # posterior at alpha_bar_prev = 1 is a point mass on x0
            continue
        a = cur.alpha / nxt.alpha
        s2 = max(0.0, cur.sigma**2 - (a * nxt.sigma) ** 2)
        coef_x = a * nxt.sigma**2 / cur.sigma**2
        coef_x0 = nxt.alpha * s2 / cur.sigma**2
        std = math.sqrt(s2) * nxt.sigma / cur.sigma
        x = coef_x * x + coef_x0 * x0 + std * randn_per_sample(x, generators)
    return x
