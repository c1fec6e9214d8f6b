"""EDM recipe: Table 1 preconditioning, the lambda(sigma) weighting, the log-normal sigmas, the "edm-ve" process and
sampling_fn, checked against closed forms on Gaussian data and a tiny DiT trained on toy latents."""

import itertools
import math

import pytest
import torch

from ditcore.config import ConfigError, from_dict
from ditcore.models import build_model
from ditcore.objectives import ObjectiveConfig, loss, sampling_fn, validation_loss
from ditcore.preconditioning import edm_loss_weight, edm_scalings
from ditcore.processes import build_process
from ditcore.samplers import model_fn_from_model, noise_from_seeds, sample, time_grid
from ditcore.samplers.analytic import GaussianData
from ditcore.timesteps import TimeSampler

EDM = {
    "process": "edm-ve",
    "prediction": "x0",
    "preconditioning": "edm",
    "t_sampler": "log-normal",
    "cond_dropout": 0.0,
}


def ideal_network(data: GaussianData, sigma_data: float):
    """The F whose preconditioned denoiser is E[x0 | x]: invert D = c_skip x + c_out F with Table 1's formulas."""

    def network(inp, c_noise, **_):
        sigma = torch.exp(4.0 * c_noise.to(torch.float64))[:, None]  # c_noise = ln(sigma) / 4
        norm = sigma**2 + sigma_data**2
        x = inp.to(torch.float64) * torch.sqrt(norm)  # inp = x / sqrt(sigma^2 + sigma_data^2)
        posterior_mean = data.x0_hat(x, torch.ones_like(sigma[:, 0]), sigma[:, 0])
        c_skip = sigma_data**2 / norm
        c_out = sigma * sigma_data / torch.sqrt(norm)
        return ((posterior_mean - c_skip * x) / c_out).to(inp.dtype)

    return network


def test_loss_weight_makes_the_effective_target_weight_uniform():
    sigma = torch.logspace(-3, 2, 41, dtype=torch.float64)
    for sigma_data in (0.5, 1.3):
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sigma_data)
        torch.testing.assert_close(edm_loss_weight(sigma, sigma_data) * c_out**2, torch.ones_like(sigma))
        # unit-variance network input and effective target for data of std sigma_data (EDM Appendix B.6)
        torch.testing.assert_close(c_in**2 * (sigma_data**2 + sigma**2), torch.ones_like(sigma))
        target_var = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2
        torch.testing.assert_close(target_var, torch.ones_like(sigma))
        torch.testing.assert_close(torch.exp(4 * c_noise), sigma)


def test_zero_network_loss_is_one_at_every_sigma_for_sigma_data_matched_data():
    """F = 0 gives D = c_skip x = E[x0|x] for N(0, sigma_data^2) data, whose weighted error is exactly 1 per dim."""
    x0 = 0.5 * torch.randn(50_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def zero(x, t, **_):
        return torch.zeros_like(x)

    cfg = ObjectiveConfig(**EDM)
    # the target is N(0, 1) per sample, its square has variance 2: standard error sqrt(2 / 50000) = 0.0063
    assert loss(zero, x0, {}, torch.Generator().manual_seed(1), cfg).item() == pytest.approx(1.0, abs=0.03)
    narrow = ObjectiveConfig(**{**EDM, "p_mean": -4.0, "p_std": 0.3})  # tiny sigmas only
    assert loss(zero, x0, {}, torch.Generator().manual_seed(1), narrow).item() == pytest.approx(1.0, abs=0.03)
    mismatched = ObjectiveConfig(**{**EDM, "sigma_data": 0.25})
    assert loss(zero, x0, {}, torch.Generator().manual_seed(1), mismatched).item() > 1.5


def test_loss_equals_lambda_weighted_denoiser_error():
    """EDM Eq. 2 with the network's own inputs: mean lambda(sigma) (D - x0)^2 equals the returned loss (Eq. 8)."""
    sigma_data = 0.7
    cfg = ObjectiveConfig(**{**EDM, "sigma_data": sigma_data})
    x0 = torch.randn(64, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seen = []

    def network(inp, c_noise, **_):
        out = torch.einsum("ij,bjhw->bihw", weight, inp) + c_noise.view(-1, 1, 1, 1)
        seen.append((inp, c_noise, out))
        return out

    value = loss(network, x0, {}, torch.Generator().manual_seed(2), cfg).item()
    inp, c_noise, out = seen[0]
    sigma = torch.exp(4 * c_noise).view(-1, 1, 1, 1)
    x = inp * torch.sqrt(sigma**2 + sigma_data**2)
    d = sigma_data**2 / (sigma**2 + sigma_data**2) * x + sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2) * out
    lam = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    assert value == pytest.approx(torch.mean(lam * (d - x0) ** 2).item(), rel=1e-6)  # loss is float32
    # x really is x0 + sigma * n with n standard normal
    n = (x - x0) / sigma
    assert abs(n.mean().item()) < 0.1 and abs(n.std().item() - 1) < 0.1


def test_log_normal_sigmas():
    process = build_process("edm-ve")
    sampler = TimeSampler("log-normal", p_mean=-1.2, p_std=1.2)
    t = sampler.times(50_000, torch.Generator().manual_seed(0), process=process)
    log_sigma = torch.log(process.sigma(t.double()))
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.02)
    with pytest.raises(ValueError, match="needs the process"):
        TimeSampler("log-normal").times(4)
    with pytest.raises(ValueError, match="time shift"):
        TimeSampler("log-normal", shift=2.0).times(4, process=process)


def test_ideal_network_gives_the_closed_form_posterior_mean():
    data = GaussianData(torch.tensor([0.8, -0.3]), torch.tensor([0.4, 0.15]))
    cfg = ObjectiveConfig(**EDM)
    model_fn, prediction = sampling_fn(ideal_network(data, 0.5), cfg)
    assert prediction == "x0"
    g = torch.Generator().manual_seed(0)
    for sigma in (0.002, 0.05, 0.5, 3.0, 80.0):
        x = data.sample(16, g) + sigma * torch.randn(16, 2, generator=g, dtype=torch.float64)
        t = torch.full((16,), sigma / 80.0, dtype=torch.float64)
        expected = data.x0_hat(x, torch.ones(16, dtype=torch.float64), torch.full((16,), sigma, dtype=torch.float64))
        torch.testing.assert_close(model_fn(x, t), expected)


def edm_algorithm_1(denoiser, x_start: torch.Tensor, steps: int) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic Heun in sigma, Eq. 5 grid with rho = 7, Euler into sigma = 0)."""
    i = torch.arange(steps, dtype=torch.float64)
    sigmas = (80.0 ** (1 / 7) + i / (steps - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    sigmas = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
    x = x_start
    for cur, nxt in itertools.pairwise(sigmas):
        d = (x - denoiser(x, cur)) / cur
        x_next = x + (nxt - cur) * d
        if nxt > 0:
            x_next = x + (nxt - cur) * 0.5 * (d + (x_next - denoiser(x_next, nxt)) / nxt)
        x = x_next
    return x


def test_heun_on_the_edm_grid_is_edm_algorithm_1_and_reproduces_the_gaussian_marginal(one_thread):
    data = GaussianData(torch.tensor([0.8, -0.3]), torch.tensor([0.4, 0.15]))
    cfg = ObjectiveConfig(**EDM)
    model_fn, prediction = sampling_fn(ideal_network(data, 0.5), cfg)
    noise = noise_from_seeds(range(2000), (2,), dtype=torch.float64)
    x_start = noise * math.sqrt(1 + 80.0**2)  # where `sample` starts: the marginal scale at t = 1

    def posterior_mean(x, sigma):
        ones = torch.ones(x.shape[0], dtype=torch.float64)
        return data.x0_hat(x, ones, float(sigma) * ones)

    x, nfe = sample(
        model_fn,
        noise,
        process=cfg.process,
        prediction=prediction,
        sampler="heun",
        steps=18,
        time_grid="edm",
        return_nfe=True,
    )
    assert nfe == 35  # EDM's 18-step Heun: 2 * 18 - 1 evaluations
    torch.testing.assert_close(x, edm_algorithm_1(posterior_mean, x_start, 18), rtol=0, atol=1e-10)
    # with enough steps the ODE end point is the exact transport map onto the data marginal
    x = sample(model_fn, noise, process=cfg.process, prediction=prediction, sampler="heun", steps=100, time_grid="edm")
    exact = data.exact_pf_ode(x_start, build_process(cfg.process), 1.0)
    assert (x - exact).abs().max().item() < 5e-3
    torch.testing.assert_close(x.mean(0), data.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), data.std, atol=0.03, rtol=0)


def test_edm_time_grid_is_karras_rho_schedule():
    ts = time_grid(build_process("edm-ve"), 18, "edm")
    i = torch.arange(18, dtype=torch.float64)
    rho = 7.0
    karras = (80.0 ** (1 / rho) + i / 17 * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho  # EDM Eq. 5
    torch.testing.assert_close(80.0 * ts[:-1], karras)
    assert ts[-1] == 0.0


def test_sampling_fn_without_preconditioning_is_the_plain_model_fn():
    class Fake(torch.nn.Module):
        in_channels = 2

        def forward(self, x, t, y):
            return torch.cat([x * t.view(-1, 1, 1, 1), 1e3 * torch.ones_like(x)], 1)

    x, t, y = torch.randn(3, 2, 4, 4), torch.rand(3), torch.zeros(3, dtype=torch.long)
    for cfg in (
        ObjectiveConfig(prediction="eps"),
        ObjectiveConfig(process="vp-linear", prediction="eps", learn_sigma=True),
    ):
        fn, prediction = sampling_fn(Fake(), cfg)
        assert prediction == "eps"
        torch.testing.assert_close(fn(x, t, y=y), model_fn_from_model(Fake())(x, t, y=y))
        assert fn(x, t, y=y).shape == x.shape
    full, _ = sampling_fn(
        Fake(), ObjectiveConfig(process="vp-linear", prediction="eps", learn_sigma=True), keep_variance=True
    )
    torch.testing.assert_close(full(x, t, y=y), Fake()(x, t, y=y))  # [prediction; variance output] for the sampler
    with pytest.raises(ValueError, match="learn_sigma"):
        sampling_fn(Fake(), ObjectiveConfig(), keep_variance=True)


def test_validation_loss_uses_log_spaced_sigmas():
    cfg = ObjectiveConfig(**EDM)
    seen = []

    def network(inp, c_noise, **_):
        seen.append(math.exp(4 * c_noise[0].item()))
        return 0.1 * inp

    x0 = 0.5 * torch.randn(8, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    a = validation_loss(network, x0, {}, cfg, num_t=4, seed=3)
    b = validation_loss(network, x0, {}, cfg, num_t=4, seed=3)
    assert a == b
    log_edges = [math.log(0.002) + k / 4 * (math.log(80.0) - math.log(0.002)) for k in range(5)]
    expected = [math.exp(0.5 * (lo + hi)) for lo, hi in itertools.pairwise(log_edges)]
    assert seen[:4] == pytest.approx(expected, rel=1e-5)


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="edm-ve"):
        ObjectiveConfig(process="vp-linear", prediction="x0", preconditioning="edm")
    with pytest.raises(ValueError, match="prediction to 'x0'"):
        ObjectiveConfig(process="edm-ve", prediction="eps", preconditioning="edm")
    with pytest.raises(ValueError, match="preconditioning"):
        ObjectiveConfig(preconditioning="karras")
    with pytest.raises(ValueError, match="sigma_data"):
        ObjectiveConfig(**{**EDM, "sigma_data": 0.0})
    with pytest.raises(ConfigError, match="objective"):
        from_dict(ObjectiveConfig, {"preconditioning": "edm"}, where="objective")  # default process is flow
    cfg = from_dict(
        ObjectiveConfig,
        {"process": "edm-ve", "prediction": "x0", "preconditioning": "edm", "t_sampler": "log-normal"},
        where="objective",
    )
    assert (cfg.sigma_data, cfg.p_mean, cfg.p_std) == (0.5, -1.2, 1.2)


def test_tiny_dit_trained_with_edm_samples_onto_the_toy_support(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 4)
    patterns = 0.5 * torch.sign(torch.randn(2, *shape, generator=g))  # std ~ sigma_data = 0.5

    def toy(n, gen):
        labels = torch.randint(0, 2, (n,), generator=gen)
        return patterns[labels] + 0.03 * torch.randn(n, *shape, generator=gen), labels

    model = build_model("DiT-T/2", in_channels=2, input_size=4, num_classes=2)
    cfg = ObjectiveConfig(**{**EDM, "cond_dropout": 0.1})
    val_x, val_y = toy(128, torch.Generator().manual_seed(1))
    before = validation_loss(model, val_x, {"y": val_y}, cfg, num_t=8)
    assert before == pytest.approx(1.0, abs=0.1)  # adaLN-Zero: F = 0 at init, and the target has unit variance
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(250):
        x0, y = toy(64, g)
        value = loss(model, x0, {"y": y}, g, cfg, {"y": 2})
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    model.eval()
    after = validation_loss(model, val_x, {"y": val_y}, cfg, num_t=8)
    assert after < 0.6 * before, (before, after)
    n = 32
    labels = torch.arange(n) % 2
    model_fn, prediction = sampling_fn(model, cfg)
    x = sample(
        model_fn,
        noise_from_seeds(range(n), shape),
        process=cfg.process,
        prediction=prediction,
        sampler="heun",
        steps=12,
        time_grid="edm",
        cond={"y": labels},
        uncond={"y": 2},
        guidance=2.0,
    )
    dist = (x[:, None] - patterns[None]).flatten(2).pow(2).mean(-1).sqrt()  # [n, 2] RMS distance to each pattern
    assert (dist.argmin(1) == labels).float().mean() >= 0.9
    assert dist.min(1).values.median() < 0.15  # patterns are ~0.7 RMS apart
