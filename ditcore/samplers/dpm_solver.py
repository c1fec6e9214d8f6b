"""DPM-Solver++ (Lu et al. 2022): exponential integrators of the PF-ODE with the data prediction.

Written with log-SNR lambda = log(alpha/sigma) and h = lambda_n - lambda_i:
    x_n = (sigma_n / sigma_i) x_i + alpha_n (1 - e^{-h}) D,
where D approximates x0_hat over the step: 2M uses the previous step's x0_hat (paper Alg. 2), 3M two
previous ones (the phi-function form of diffusers / k-diffusion), 2S an extra midpoint evaluation
(paper Alg. 1, r = 1/2). Multistep history only keeps points with finite lambda: a step that starts
from pure noise (alpha = 0, lambda = -inf, e.g. flow at t = 1) is first order and starts the history anew.
The last interval (into sigma = 0, lambda = +inf) takes x0_hat, as in the reference implementations; below 15
steps 3M takes the step before it at order 2 (diffusers' lower_order_final, for stability with few steps: on the
64-D Gaussian of tests/ditcore/test_samplers_diffusers.py the 5-NFE error drops from 0.25 to 0.18).
"""

from __future__ import annotations

import itertools
import math

import torch

from ditcore.processes import Process
from ditcore.samplers.grids import GridPoint, grid_point
from ditcore.samplers.guidance import Denoiser
from ditcore.samplers.stepping import grid_points, walk_grid


def first_order_step(cur: GridPoint, nxt: GridPoint, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(1) == DDIM(eta=0): x_n = sigma_n/sigma_i x_i + alpha_n (1 - e^{-h}) D."""
    h = nxt.log_snr - cur.log_snr
    return (nxt.sigma / cur.sigma) * x + nxt.alpha * (-math.expm1(-h)) * d


def sample_dpmpp_multistep(
    denoise: Denoiser, x: torch.Tensor, ts: torch.Tensor, process: Process, *, order: int = 2, **_: object
) -> torch.Tensor:
    """DPM-Solver++ 2M (order=2) or 3M (order=3) along ts; one evaluation per step."""
    if order not in (2, 3):
        raise ValueError(f"multistep order must be 2 or 3, got {order}")
    points = grid_points(process, ts)
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, x0_hat) at previous points, newest last
    steps = len(points) - 1
    for i, (cur, nxt) in enumerate(itertools.pairwise(points)):
        x0, _ = denoise(x, cur.t)
        # diffusers' lower_order_final for fewer than 15 steps: 3M takes the step before the final jump at order 2
        step_order = 2 if (order == 3 and steps < 15 and i == steps - 2) else order
        if nxt.sigma == 0.0:
            x = x0
            continue
        if not math.isfinite(cur.log_snr):
            history = []  # a lambda = -inf node cannot anchor a polynomial in lambda
            x = first_order_step(cur, nxt, x, x0)
            continue
        h = nxt.log_snr - cur.log_snr
        phi1 = -math.expm1(-h)  # 1 - e^{-h}
        if step_order == 3 and len(history) >= 2:
            (lam1, m1), (lam2, m2) = history[-1], history[-2]
            r0 = (cur.log_snr - lam1) / h
            r1 = (lam1 - lam2) / h
            d1_0 = (x0 - m1) / r0
            d1_1 = (m1 - m2) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = 1.0 - phi1 / h
            phi3 = (h - phi1) / (h * h) - 0.5
            x = (nxt.sigma / cur.sigma) * x + nxt.alpha * (phi1 * x0 + phi2 * d1 - phi3 * d2)
        elif history:
            lam1, m1 = history[-1]
            r = (cur.log_snr - lam1) / h
            d = x0 + (x0 - m1) / (2.0 * r)  # (1 + 1/2r) x0_i - 1/2r x0_{i-1}
            x = first_order_step(cur, nxt, x, d)
        else:
            x = first_order_step(cur, nxt, x, x0)
        history = (history + [(cur.log_snr, x0)])[-2:]
    return x


def sample_dpmpp_2s(
    denoise: Denoiser, x: torch.Tensor, ts: torch.Tensor, process: Process, **_: object
) -> torch.Tensor:
    """DPM-Solver++(2S) singlestep with the log-SNR midpoint; two evaluations per step, one on the last."""

    def step(cur, nxt, x, x0, _):
        if math.isfinite(cur.log_snr):
            lam_mid = cur.log_snr + 0.5 * (nxt.log_snr - cur.log_snr)
            t_mid = float(process.t_from_log_snr(torch.tensor(lam_mid, dtype=torch.float64)))
        else:
            t_mid = 0.5 * (cur.t + nxt.t)  # no log-SNR midpoint from pure noise: take the time midpoint
        mid = grid_point(process, t_mid)
        u = first_order_step(cur, mid, x, x0)
        x0_mid, _ = denoise(u, mid.t)
        return first_order_step(cur, nxt, x, x0_mid)  # r = 1/2: D = x0_hat at the midpoint

    return walk_grid(denoise, x, grid_points(process, ts), step)
