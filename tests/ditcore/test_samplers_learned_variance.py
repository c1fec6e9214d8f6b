"""Learned-variance ancestral sampling (iDDPM Eq. 15): checked against the discrete DiT schedule computed directly."""

import math

import numpy as np
import pytest
import torch

from ditcore.processes import build_process
from ditcore.samplers import make_generators, model_fn_from_model, noise_from_seeds, sample
from ditcore.samplers.analytic import GaussianData, analytic_model_fn
from ditcore.samplers.ddpm import sample_ddpm
from ditcore.samplers.guidance import Denoiser

GAUSS = GaussianData(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([0.3, 1.0, 0.5, 2.0]))
VP = build_process("vp-linear")
ALPHAS_CUMPROD = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))  # DiT / ADM betas


def with_variance(fn, o_fn):
    """model_fn returning [prediction; o] with o = o_fn(x_t)."""
    return lambda x, t, **c: torch.cat([fn(x, t, **c), o_fn(x)], 1)


def test_minus_one_is_the_fixed_posterior_variance_sampler():
    fn = analytic_model_fn(GAUSS, VP, "eps")
    noise = noise_from_seeds(range(16), (4,), dtype=torch.float64)
    fixed = sample(
        fn, noise, process=VP, prediction="eps", sampler="ddpm", steps=25, generators=make_generators(range(100, 116))
    )
    learned = sample(
        with_variance(fn, lambda x: -torch.ones_like(x)),
        noise,
        process=VP,
        prediction="eps",
        sampler="ddpm-learned",
        steps=25,
        generators=make_generators(range(100, 116)),
    )
    torch.testing.assert_close(learned, fixed, rtol=0, atol=1e-12)


@pytest.mark.parametrize("o_fn", [lambda x: torch.ones_like(x), lambda x: torch.full_like(x, 0.3), torch.tanh])
def test_one_step_matches_the_discrete_schedule(o_fn):
    """One respaced step tau = 999 -> 500: mean from DDPM Eq. 7, variance exp(v log beta + (1 - v) log beta_tilde)."""
    fn = analytic_model_fn(GAUSS, VP, "eps")
    noise = noise_from_seeds(range(6), (4,), dtype=torch.float64)
    out = sample_ddpm(
        Denoiser(with_variance(fn, o_fn), VP, "eps"),
        noise,
        torch.tensor([1.0, 500 / 999]),
        VP,
        generators=make_generators(range(6)),
        learned_variance=True,
    )
    ab_t, ab_prev = ALPHAS_CUMPROD[999], ALPHAS_CUMPROD[500]
    beta = 1.0 - ab_t / ab_prev  # the respaced step's beta
    beta_tilde = (1.0 - ab_prev) / (1.0 - ab_t) * beta
    eps = fn(noise, torch.ones(6, dtype=torch.float64))
    x0 = (noise - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    coef_x0 = math.sqrt(ab_prev) * beta / (1 - ab_t)  # DDPM Eq. 7
    coef_xt = math.sqrt(ab_t / ab_prev) * (1 - ab_prev) / (1 - ab_t)
    mean = coef_x0 * x0 + coef_xt * noise
    v = (o_fn(noise) + 1) / 2
    std = torch.exp(0.5 * (v * math.log(beta) + (1 - v) * math.log(beta_tilde)))
    z = torch.stack([torch.randn(4, generator=g, dtype=torch.float32) for g in make_generators(range(6))]).double()
    torch.testing.assert_close(out, mean + std * z, rtol=1e-6, atol=1e-8)  # lgamma schedule vs cumprod: ~1e-9
    if float(o_fn(torch.zeros(1))) == 1.0:
        torch.testing.assert_close(std, torch.full_like(std, math.sqrt(beta)))


def test_guidance_keeps_the_conditional_variance():
    """As DiT's forward_with_cfg: guide the prediction channels, take the variance of the conditional half."""
    fn = analytic_model_fn(GAUSS, VP, "eps")

    def model(x, t, y):  # o = +1 for the class, -1 for the null class
        return torch.cat([fn(x, t), torch.where(y[:, None] == 0, 1.0, -1.0).expand_as(x).to(x)], 1)

    noise = noise_from_seeds(range(8), (4,), dtype=torch.float64)
    kw = dict(
        process=VP, prediction="eps", sampler="ddpm-learned", steps=10, cond={"y": torch.zeros(8, dtype=torch.long)}
    )
    guided = sample(model, noise, uncond={"y": 1}, guidance=3.0, generators=make_generators(range(8)), **kw)
    plain = sample(model, noise, generators=make_generators(range(8)), **kw)
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-12)  # same eps for both halves: only o could differ


def test_learned_variance_needs_vp_and_two_c_channels():
    noise = torch.zeros(2, 4, dtype=torch.float64)
    fn = analytic_model_fn(GAUSS, "flow", "velocity")
    with pytest.raises(ValueError, match="variance-preserving"):
        sample(with_variance(fn, torch.tanh), noise, process="flow", prediction="velocity", sampler="ddpm-learned")
    with pytest.raises(ValueError, match="2C = 8"):
        sample(analytic_model_fn(GAUSS, VP, "eps"), noise, process=VP, prediction="eps", sampler="ddpm-learned")


def test_model_fn_from_model_keeps_the_variance_on_request():
    class Fake(torch.nn.Module):
        in_channels = 2

        def forward(self, x, t, y):
            return torch.cat([x, 100 + x], 1)

    x = torch.ones(3, 2, 4, 4)
    out = model_fn_from_model(Fake(), learn_sigma=True)(x, torch.zeros(3), y=torch.zeros(3, dtype=torch.long))
    assert out.shape == (3, 4, 4, 4) and float(out[:, 2:].min()) == 101.0
