"""Euler and Heun (EDM's 2nd-order) solvers on the probability-flow ODE in the process's own time t.

dx/dt = d_alpha_t x0_hat + d_sigma_t eps_hat (the velocity of the interpolant; for rectified flow this is
the model's velocity and Euler is the SD3 sampler). The final interval into clean data takes the x0
prediction, as in EDM (Karras et al. 2022, Alg. 1 falls back to Euler on the last step).
"""

from __future__ import annotations

import torch

from ditcore.processes import Process
from ditcore.samplers.guidance import Denoiser
from ditcore.samplers.stepping import grid_points, walk_grid


def _velocity(p, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return p.d_alpha * x0 + p.d_sigma * eps


def sample_euler(denoise: Denoiser, x: torch.Tensor, ts: torch.Tensor, process: Process, **_: object) -> torch.Tensor:
    """Explicit Euler along ts; one model evaluation per step."""

    def step(cur, nxt, x, x0, eps):
        return x + (nxt.t - cur.t) * _velocity(cur, x0, eps)

    return walk_grid(denoise, x, grid_points(process, ts), step)


def sample_heun(denoise: Denoiser, x: torch.Tensor, ts: torch.Tensor, process: Process, **_: object) -> torch.Tensor:
    """Heun's method (trapezoidal predictor-corrector) along ts; two evaluations per step, one on the last."""

    def step(cur, nxt, x, x0, eps):
        dt = nxt.t - cur.t
        v_cur = _velocity(cur, x0, eps)
        x_pred = x + dt * v_cur
        x0_n, eps_n = denoise(x_pred, nxt.t)
        return x + dt * 0.5 * (v_cur + _velocity(nxt, x0_n, eps_n))

    return walk_grid(denoise, x, grid_points(process, ts), step)
