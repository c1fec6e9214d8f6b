"""Learned variance: the DDPM chain of a VP process, the VLB terms against direct computations, the hybrid loss and
a tiny learn_sigma DiT whose variance output moves off beta_tilde and lowers the bound."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from ditcore.config import ConfigError, from_dict
from ditcore.models import build_model
from ditcore.objectives import (
    ObjectiveConfig,
    check_model,
    hybrid_loss_terms,
    loss,
    validation_loss,
    vlb_bits_per_dim,
)
from ditcore.processes import build_process
from ditcore.vlb import DDPMChain, discretized_gaussian_log_likelihood, normal_kl, prior_bpd, vlb_terms_bpd

HYBRID = {"process": "vp-linear", "prediction": "eps", "learn_sigma": True, "cond_dropout": 0.0}


def test_vp_linear_chain_is_the_adm_chain():
    chain = DDPMChain.from_process("vp-linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    np.testing.assert_allclose(chain.beta[1:].numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(chain.alpha_bar[1:].numpy(), np.cumprod(1 - betas), rtol=1e-12)
    np.testing.assert_allclose(chain.t[1:].numpy() * 999, np.arange(1000), atol=1e-9)  # ADM index i - 1
    assert chain.alpha_bar[0] == 1.0 and chain.num_steps == 1000


@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine", "sit-gvp"])
def test_chain_steps_lie_on_the_process_and_match_the_gaussian_posterior(name):
    process = build_process(name)
    chain = DDPMChain.from_process(name, 50)
    assert bool((chain.beta[1:] <= 0.999 + 1e-12).all()) and bool((chain.beta[1:] > 0).all())
    torch.testing.assert_close(process.alpha(chain.t) ** 2, chain.alpha_bar, rtol=1e-6, atol=1e-12)
    # q(x_{i-1} | x_i, x_0) by conditioning the joint Gaussian of (x_{i-1}, x_i) given x_0 (DDPM Eq. 6-7)
    ab, ab_prev = chain.alpha_bar[2:], chain.alpha_bar[1:-1]
    a_i = ab / ab_prev
    var_prev, var_i, cov = 1 - ab_prev, 1 - ab, torch.sqrt(a_i) * (1 - ab_prev)
    torch.testing.assert_close(chain.beta_tilde[2:], var_prev - cov**2 / var_i)
    x0, x_t = torch.randn(3, 49, dtype=torch.float64), torch.randn(3, 49, dtype=torch.float64)
    i = torch.arange(2, 51)
    expected_mean = torch.sqrt(ab_prev) * x0 + cov / var_i * (x_t - torch.sqrt(ab) * x0)
    got = torch.stack(
        [chain.posterior_mean(x0[:, k : k + 1], x_t[:, k : k + 1], i[k].repeat(3))[:, 0] for k in range(49)], 1
    )
    torch.testing.assert_close(got, expected_mean)


def test_cosine_chain_clips_the_last_beta():
    chain = DDPMChain.from_process("vp-cosine", 1000)
    assert chain.beta[-1].item() == pytest.approx(0.999)
    assert 0 < chain.alpha_bar[-1].item() < 1e-8
    assert chain.t[-1].item() < 1.0  # pulled in so the process marginal at t_T has the clipped alpha_bar


def test_model_log_variance_interpolates_beta_tilde_and_beta():
    chain = DDPMChain.from_process("vp-linear", 1000)
    i = torch.tensor([1, 2, 500, 1000])
    like = torch.zeros(4, 1)
    small = chain.model_log_variance(-torch.ones(4, 1), i)
    large = chain.model_log_variance(torch.ones(4, 1), i)
    mid = chain.model_log_variance(torch.zeros(4, 1), i)
    beta = torch.tensor([1e-4, 1e-4 + 0.0199 / 999, 1e-4 + 0.0199 * 499 / 999, 0.02], dtype=torch.float64)
    ab = chain.alpha_bar
    beta_tilde = beta * (1 - ab[i - 1]) / (1 - ab[i])
    beta_tilde[0] = beta_tilde[1]  # ADM's clipped log variance at the first step
    torch.testing.assert_close(large[:, 0].double(), torch.log(beta), rtol=1e-6, atol=0)
    torch.testing.assert_close(small[:, 0].double(), torch.log(beta_tilde), rtol=1e-6, atol=0)
    torch.testing.assert_close(mid[:, 0].double(), 0.5 * torch.log(beta * beta_tilde), rtol=1e-6, atol=0)
    torch.testing.assert_close(chain.fixed_log_variance("fixed-small", i, like), small)


def test_normal_kl_matches_closed_form_and_monte_carlo():
    m1, m2 = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.0, 0.5, 2.1], dtype=torch.float64)
    s1, s2 = torch.tensor([0.5, 1.0, 0.01], dtype=torch.float64), torch.tensor([0.7, 2.0, 0.02], dtype=torch.float64)
    kl = normal_kl(m1, 2 * torch.log(s1), m2, 2 * torch.log(s2))
    closed = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    torch.testing.assert_close(kl, closed)
    z = m1 + s1 * torch.randn(400_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_q1 = -0.5 * ((z - m1) / s1) ** 2 - torch.log(s1)
    log_q2 = -0.5 * ((z - m2) / s2) ** 2 - torch.log(s2)
    torch.testing.assert_close((log_q1 - log_q2).mean(0), kl, rtol=0.02, atol=0.01)


def _log_bin_probability(lo: float, hi: float, mean: float, std: float) -> float:
    """log P(lo < X < hi) for X ~ N(mean, std^2) by quadrature of the density, its peak in the bin factored out."""
    a, b = (lo - mean) / std, (hi - mean) / std
    a, b = max(a, min(b, 0.0) - 40.0), min(b, max(a, 0.0) + 40.0)  # beyond 40 sd past the peak: < e^-800 of it
    z_peak = min(max(0.0, a), b)  # the point of [a, b] closest to 0

    def density_ratio(z: float) -> float:
        return math.exp(-0.5 * (z * z - z_peak * z_peak))

    value, _ = integrate.quad(density_ratio, a, b, epsabs=0, epsrel=1e-12, limit=200)
    return math.log(value) - 0.5 * z_peak * z_peak - 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize(
    "x, mean, std",
    [(0.0, 0.0, 0.1), (0.2, 0.25, 0.003), (-0.5, 0.4, 0.05), (1.0, 0.3, 0.2), (-1.0, -0.9, 0.01), (0.6, 0.0, 0.004)],
)
def test_discretized_decoder_matches_integrated_gaussian(x, mean, std):
    half = 1 / 255
    lo = -math.inf if x == -1.0 else x - half  # the outermost bins reach to infinity (DDPM Eq. 13)
    hi = math.inf if x == 1.0 else x + half
    expected = _log_bin_probability(lo, hi, mean, std)
    got = discretized_gaussian_log_likelihood(
        torch.tensor([x], dtype=torch.float64),
        torch.tensor([mean], dtype=torch.float64),
        torch.tensor([math.log(std)], dtype=torch.float64),
    )
    assert got.item() == pytest.approx(expected, rel=1e-7, abs=1e-10)


def test_discretized_decoder_sums_to_one_over_all_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, std in ((0.1, 0.02), (0.99, 0.3), (-2.0, 0.5)):
        ll = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, math.log(std))
        )
        assert torch.exp(ll).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_vlb_terms_pick_the_decoder_at_the_first_step_and_kl_elsewhere():
    chain = DDPMChain.from_process("vp-linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, generator=g, dtype=torch.float64) * 2 - 1
    x_t, x0_hat = torch.randn(2, 3, generator=g, dtype=torch.float64), x0 + 0.01
    i = torch.tensor([1, 7])
    log_var = chain.fixed_log_variance("fixed-large", i, x0)
    got = vlb_terms_bpd(chain, x0, x_t, i, x0_hat, log_var)
    mean1 = chain.posterior_mean(x0_hat, x_t, i)
    nll = -discretized_gaussian_log_likelihood(x0[0], mean1[0], 0.5 * log_var[0]).mean() / math.log(2)
    kl = normal_kl(chain.posterior_mean(x0, x_t, i)[1], chain.log_beta_tilde[7], mean1[1], log_var[1]).mean()
    torch.testing.assert_close(got, torch.stack([nll, kl / math.log(2)]))
    # the prior term: KL(N(sqrt(ab_T) x0, 1 - ab_T) || N(0, 1)) per dim
    ab = chain.alpha_bar[-1]
    prior = 0.5 * (ab * x0**2 + (1 - ab) - 1 - torch.log(1 - ab)).mean(1) / math.log(2)
    torch.testing.assert_close(prior_bpd(chain, x0), prior)


class TwoScalarModel(torch.nn.Module):
    """Output [B, 2C, ...] = (mean scalar * x, variance scalar): one parameter per output half."""

    def __init__(self):
        super().__init__()
        self.mean_scale = torch.nn.Parameter(torch.tensor(0.5))
        self.var_out = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t, **_):
        return torch.cat([self.mean_scale * x, self.var_out * torch.ones_like(x)], 1)


def test_hybrid_loss_with_zero_weight_is_l_simple():
    model = TwoScalarModel()
    x0 = torch.rand(32, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    no_vlb = ObjectiveConfig(**HYBRID, vlb_weight=0.0)
    terms = hybrid_loss_terms(model, x0, {}, torch.Generator().manual_seed(1), no_vlb)
    assert terms["loss"].item() == terms["mse"].item() and terms["vlb"].item() > 0
    terms["loss"].backward()
    assert model.var_out.grad is None or model.var_out.grad.item() == 0.0
    full = hybrid_loss_terms(model, x0, {}, torch.Generator().manual_seed(1), ObjectiveConfig(**HYBRID))
    assert full["loss"].item() == pytest.approx(full["mse"].item() + 0.001 * full["vlb"].item(), rel=1e-6)
    assert full["mse"].item() == terms["mse"].item()  # same draws, same L_simple
    value = loss(model, x0, {}, torch.Generator().manual_seed(1), ObjectiveConfig(**HYBRID))
    assert value.item() == full["loss"].item()  # `loss` dispatches to the hybrid objective


def test_vlb_term_does_not_train_the_mean():
    model = TwoScalarModel()
    x0 = torch.rand(32, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    terms = hybrid_loss_terms(model, x0, {}, torch.Generator().manual_seed(1), ObjectiveConfig(**HYBRID))
    mean_grad, var_grad = torch.autograd.grad(
        terms["vlb"], [model.mean_scale, model.var_out], retain_graph=True, allow_unused=True
    )
    assert mean_grad is None or mean_grad.item() == 0.0
    assert var_grad.item() != 0.0
    assert torch.autograd.grad(terms["mse"], model.mean_scale)[0].item() != 0.0


def test_hybrid_draws_uniform_chain_steps_at_their_process_times():
    seen = []

    def model(x, t, **_):
        seen.append(t.clone())
        return torch.cat([torch.zeros_like(x), torch.zeros_like(x)], 1)

    x0 = torch.zeros(20_000, 1)
    hybrid_loss_terms(model, x0, {}, torch.Generator().manual_seed(0), ObjectiveConfig(**HYBRID))
    index = seen[0].double() * 999 + 1  # vp-linear: t_i = (i - 1) / 999
    torch.testing.assert_close(index, index.round(), rtol=0, atol=1e-3)
    assert index.min() >= 1 and index.max() <= 1000
    assert index.mean().item() == pytest.approx(500.5, abs=6) and index.std().item() == pytest.approx(288.7, abs=4)


def test_learn_sigma_config_and_model_errors():
    with pytest.raises(ValueError, match="variance-preserving"):
        ObjectiveConfig(process="flow", learn_sigma=True)
    with pytest.raises(ValueError, match="t_sampler"):
        ObjectiveConfig(**HYBRID, t_sampler="log-normal")
    with pytest.raises(ValueError, match="vlb_weight"):
        ObjectiveConfig(**HYBRID, vlb_weight=-1.0)
    with pytest.raises(ConfigError, match="variance-preserving"):
        from_dict(ObjectiveConfig, {"learn_sigma": True}, where="objective")  # default process is flow
    cfg = ObjectiveConfig(**HYBRID)
    with pytest.raises(ValueError, match="learn_sigma=true"):
        check_model(cfg, build_model("DiT-T/2", input_size=4, in_channels=2, num_classes=2))
    check_model(cfg, build_model("DiT-T/2", input_size=4, in_channels=2, num_classes=2, learn_sigma=True).config)
    check_model(ObjectiveConfig(), build_model("DiT-T/2", input_size=4, in_channels=2, num_classes=2))
    with pytest.raises(ValueError, match="2C = 4"):
        loss(lambda x, t: x, torch.zeros(2, 2, 2, 2), {}, torch.Generator().manual_seed(0), cfg)
    with pytest.raises(ValueError, match="variance-preserving"):
        vlb_bits_per_dim(lambda x, t: x, torch.zeros(2, 1), {}, ObjectiveConfig(process="flow"))
    old = from_dict(ObjectiveConfig, {"process": "vp-linear", "prediction": "eps"}, where="objective")
    assert not old.learn_sigma and old.preconditioning == "none"  # configs written before these fields still load


def test_tiny_learn_sigma_dit_moves_its_variance_off_beta_tilde_and_lowers_the_bound(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 4)
    patterns = 0.8 * torch.sign(torch.randn(2, *shape, generator=g))

    def toy(n, gen):
        """8-bit toy images on [-1, 1]: one of two patterns plus noise, quantised to 256 levels."""
        labels = torch.randint(0, 2, (n,), generator=gen)
        x = (patterns[labels] + 0.1 * torch.randn(n, *shape, generator=gen)).clamp(-1, 1)
        return torch.round((x + 1) * 127.5) / 127.5 - 1, labels

    model = build_model("DiT-T/2", in_channels=2, input_size=4, num_classes=2, learn_sigma=True)
    cfg = ObjectiveConfig(**HYBRID, vlb_steps=100)
    val_x, val_y = toy(64, torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(200):
        x0, y = toy(32, g)
        value = loss(model, x0, {"y": y}, g, cfg)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    model.eval()
    assert validation_loss(model, val_x, {"y": val_y}, cfg, num_t=4) < 0.2  # the eps-prediction trained too
    chain = DDPMChain.from_process("vp-linear", 100)
    v_means = []
    with torch.no_grad():
        for step in range(1, 101, 3):
            i = torch.full((64,), step)
            x_t = chain.q_sample(val_x, torch.randn(val_x.shape, generator=g), i)
            out = model(x_t, chain.t[i].float(), y=val_y)
            v_means.append(((out[:, 2:] + 1) / 2).mean().item())  # v of Improved DDPM Eq. 15
    mean_v = sum(v_means) / len(v_means)
    assert mean_v > 0.55  # zero init gives v = 0.5 exactly; beta_tilde is v = 0: L_vlb pushed it towards beta
    est = vlb_bits_per_dim(model, val_x, {"y": val_y}, cfg, variances=("learned", "fixed-small"))
    assert est["learned"].total < est["fixed-small"].total - 0.2, (est["learned"].total, est["fixed-small"].total)
    assert 0 < est["learned"].total < 12  # an upper bound on -log2 p per dim of 8-bit data


@pytest.mark.parametrize("process", ["vp-linear", "vp-cosine", "sit-gvp"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0", "velocity"])
def test_hybrid_loss_and_bound_are_finite_on_every_vp_process(process, prediction):
    """Including the clipped last step of the schedules that reach alpha_bar = 0 (drawn with the uniform sampler)."""
    cfg = ObjectiveConfig(process=process, prediction=prediction, learn_sigma=True, cond_dropout=0.0, vlb_steps=20)
    model = TwoScalarModel()
    x0 = torch.rand(64, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    terms = hybrid_loss_terms(model, x0, {}, torch.Generator().manual_seed(1), cfg)
    assert all(bool(torch.isfinite(v)) for v in terms.values())
    est = vlb_bits_per_dim(model, x0[:4], {}, cfg, variances=("learned", "fixed-small", "fixed-large"))
    assert all(math.isfinite(e.total) and e.total > 0 for e in est.values())
