"""DDIM (Song et al. 2021) with eta, written for any process x_t = alpha_t x0 + sigma_t eps.

x_n = alpha_n x0_hat + sqrt(sigma_n^2 - c^2) eps_hat + c z, with
c = eta * sigma_n * sqrt(1 - exp(-2 (lambda_n - lambda_i)))  (DDIM eq. 16 written with log-SNR);
eta = 0 is the deterministic probability-flow sampler, eta = 1 matches DDPM's posterior variance.
"""

from __future__ import annotations

import itertools
import math

import torch

from ditcore.processes import Process
from ditcore.samplers.grids import grid_point
from ditcore.samplers.guidance import Denoiser, randn_per_sample


def ddim_coefficients(cur, nxt, eta: float) -> tuple[float, float]:
    """(eps coefficient, noise std c) for the step cur -> nxt (GridPoints)."""
    if eta == 0.0 or cur.alpha == 0.0:
        ratio = 0.0  # from pure noise every eta gives the same posterior: x_n = alpha_n x0 + sigma_n z for eta=1
    else:
        ratio = (cur.alpha * nxt.sigma) / (nxt.alpha * cur.sigma)  # exp(-(lambda_n - lambda_i)) in [0, 1)
    c = eta * nxt.sigma * math.sqrt(max(0.0, 1.0 - ratio * ratio)) if eta > 0 else 0.0
    return math.sqrt(max(0.0, nxt.sigma**2 - c * c)), c


def sample_ddim(
    denoise: Denoiser,
    x: torch.Tensor,
    ts: torch.Tensor,
    process: Process,
    *,
    eta: float = 0.0,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Run DDIM(eta) along the time grid ts (decreasing, last = clean)."""
    if not (math.isfinite(eta) and 0 <= eta <= 1):
        # Above 1 the noise std c passes sigma_n: the eps term is clamped to 0 and the samples' variance is wrong.
        raise ValueError(f"eta must be a finite number in [0, 1] (1: as much noise as DDPM), got {eta!r}")
    points = [grid_point(process, float(t)) for t in ts]
    for cur, nxt in itertools.pairwise(points):
        x0, eps = denoise(x, cur.t)
        if nxt.sigma == 0.0:
            x = x0  # last step lands on clean data
            continue
        c_eps, c_noise = ddim_coefficients(cur, nxt, eta)
        x = nxt.alpha * x0 + c_eps * eps
        if c_noise > 0:
            x = x + c_noise * randn_per_sample(x, generators)
    return x
