"""Euler and Heun (EDM's 2nd-order) solvers on the probability-flow ODE in the process's own time t.

dx/dt = d_alpha_t x0_hat + d_sigma_t eps_hat (the velocity of the interpolant; for rectified flow this is
the model's velocity and Euler is the SD3 sampler). The final interval into clean data takes the x0
prediction, as in EDM (Karras et al. 2022, Alg. 1 falls back to Euler on the last step).
"""

from __future__ import annotations

import itertools

import torch

from ditcore.processes import Process
from ditcore.samplers.grids import grid_point
from ditcore.samplers.guidance import Denoiser


def _velocity(p, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return p.d_alpha * x0 + p.d_sigma * eps


def sample_euler(denoise: Denoiser, x: torch.Tensor, ts: torch.Tensor, process: Process, **_: object) -> torch.Tensor:
    """Explicit Euler along ts; one model evaluation per step."""
    points = [grid_point(process, float(t)) for t in ts]
    for cur, nxt in itertools.pairwise(points):
        x0, eps = denoise(x, cur.t)
        if nxt.sigma == 0.0:
            x = x0
            continue
        x = x + (nxt.t - cur.t) * _velocity(cur, x0, eps)
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, ts: torch.Tensor, process: Process, **_: object) -> torch.Tensor:
    """Heun's method (trapezoidal predictor-corrector) along ts; two evaluations per step, one on the last."""
    points = [grid_point(process, float(t)) for t in ts]
    for cur, nxt in itertools.pairwise(points):
        x0, eps = denoise(x, cur.t)
        if nxt.sigma == 0.0:
            x = x0
            continue
        dt = nxt.t - cur.t
        v_cur = _velocity(cur, x0, eps)
        x_pred = x + dt * v_cur
        x0_n, eps_n = denoise(x_pred, nxt.t)
        x = x + dt * 0.5 * (v_cur + _velocity(nxt, x0_n, eps_n))
    return x
