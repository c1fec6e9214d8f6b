"""DPM-Solver++ against diffusers' DPMSolverMultistepScheduler on the exact Gaussian PF-ODE (vp-linear, d = 64).

The scheduler is built offline from config kwargs (DiT/ADM linear betas); diffusers is only imported here.
"""

import math

import pytest
import torch

from ditcore.processes import build_process
from ditcore.samplers import sample
from ditcore.samplers.analytic import GaussianData, analytic_model_fn

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notice from diffusers internals

PROC = build_process("vp-linear")
D = 64


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    # per-dimension scales from 0.1 to 2 (log-uniform): fine and coarse structure, like latents
    std = torch.exp(torch.empty(D, dtype=torch.float64).uniform_(math.log(0.1), math.log(2.0), generator=g))
    data = GaussianData(torch.randn(D, generator=g, dtype=torch.float64), std)
    noise = torch.randn(128, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return data, noise, data.exact_pf_ode(noise, PROC, 1.0)


def scheduler(order: int, **config):
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        solver_order=order,
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        **config,
    )


def run_diffusers(fn, noise, steps: int, order: int = 2, **config):
    """diffusers' loop; the model is called at the integer step tau, which is t = tau / 999 here."""
    sched = scheduler(order, **config)
    sched.set_timesteps(steps)
    x = noise.clone()
    for tau in sched.timesteps:
        eps = fn(x, torch.full((x.shape[0],), float(tau) / 999, dtype=torch.float64))
        x = sched.step(eps, tau, x).prev_sample.to(torch.float64)
    return x, [float(tau) / 999 for tau in sched.timesteps]


def rmse(a, b):
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("order,steps", [(2, 10), (2, 50), (3, 10), (3, 20)])
def test_same_solver_on_diffusers_timesteps(problem, order, steps):
    """On diffusers' own timesteps (plus the final jump to sigma = 0) the samples agree to float32 rounding."""
    data, noise, _ = problem
    fn = analytic_model_fn(data, PROC, "eps")
    ref, times = run_diffusers(fn, noise, steps, order)
    ours = sample(
        fn, noise, process=PROC, prediction="eps", sampler=f"dpmpp-{order}m", time_grid=times + [PROC.t_clean]
    )
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
def test_dpmpp_2m_at_least_as_accurate_as_diffusers(problem, steps):
    """Default grid (uniform log-SNR on vp-linear) vs diffusers' default (linspace timesteps, final sigma 0)."""
    data, noise, exact = problem
    fn = analytic_model_fn(data, PROC, "eps")
    ours, nfe = sample(fn, noise, process=PROC, prediction="eps", sampler="dpmpp-2m", steps=steps, return_nfe=True)
    theirs, times = run_diffusers(fn, noise, steps)
    assert nfe == len(times) == steps
    e_ours, e_theirs = rmse(ours, exact), rmse(theirs, exact)
    assert e_ours <= 1.02 * e_theirs, (e_ours, e_theirs)
    # the gain comes from the grid: on uniform-t (the old default, ~diffusers' linspace) the two are within a few %
    assert e_ours <= 0.6 * e_theirs, (e_ours, e_theirs)
    uniform_t = sample(
        fn, noise, process=PROC, prediction="eps", sampler="dpmpp-2m", steps=steps, time_grid="uniform-t"
    )
    assert abs(rmse(uniform_t, exact) / e_theirs - 1.0) < 0.1
