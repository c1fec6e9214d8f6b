"""Objectives: targets, timestep samplers, CFG condition dropout and the deterministic validation loss."""

import math

import pytest
import torch

from ditcore.objectives import ObjectiveConfig, drop_conditions, loss, validation_loss
from ditcore.processes import build_process
from ditcore.samplers.analytic import GaussianData, analytic_model_fn
from ditcore.timesteps import TimeSampler, resolution_shift, time_shift


def zero_model(x, t, **cond):
    return torch.zeros_like(x)


def test_uniform_and_logit_normal_statistics():
    g = torch.Generator().manual_seed(0)
    u = TimeSampler("uniform").times(20000, g)
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean().item() - 0.5) < 0.01
    ln = TimeSampler("logit-normal", logit_mean=0.5, logit_std=1.0).times(20000, g)
    logits = torch.log(ln / (1 - ln))
    assert abs(logits.mean().item() - 0.5) < 0.03 and abs(logits.std().item() - 1.0) < 0.03


def test_time_shift_moves_mass_to_noise_and_fixes_endpoints():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    shifted = time_shift(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and shifted[2] == pytest.approx(0.75)
    assert resolution_shift(1024, 256) == 2.0
    g = torch.Generator().manual_seed(1)
    assert TimeSampler(shift=3.0).times(5000, g).mean() > 0.6


def test_loss_of_zero_model_is_mean_square_target():
    cfg = ObjectiveConfig(process="flow", prediction="velocity", cond_dropout=0.0)
    x0 = torch.zeros(4096, 1)
    # velocity target = eps - x0 = eps for x0 = 0 -> E[eps^2] = 1
    value = loss(zero_model, x0, {}, torch.Generator().manual_seed(0), cfg)
    assert value.dim() == 0 and abs(value.item() - 1.0) < 0.05


@pytest.mark.parametrize("process", ["vp-linear", "flow", "sit-gvp"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0", "velocity"])
def test_bayes_optimal_model_beats_zero_model(process, prediction):
    """The exact denoiser E[x0|x_t] has the lowest possible loss; it must beat predicting zero."""
    data = GaussianData(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5]))
    x0 = data.sample(2048, torch.Generator().manual_seed(0)).float()
    cfg = ObjectiveConfig(process=process, prediction=prediction, t_sampler="logit-normal", cond_dropout=0.0)
    oracle = analytic_model_fn(data, process, prediction)
    good = loss(oracle, x0, {}, torch.Generator().manual_seed(1), cfg).item()
    bad = loss(zero_model, x0, {}, torch.Generator().manual_seed(1), cfg).item()
    assert good < 0.7 * bad


def test_loss_is_a_pure_function_of_the_generator():
    cfg = ObjectiveConfig()
    x0 = torch.randn(8, 4, 4, 4)
    calls = []

    def model(x, t, y):
        calls.append((x.clone(), t.clone(), y.clone()))
        return x * 0.5

    cond, null = {"y": torch.arange(8)}, {"y": 10}
    a = loss(model, x0, cond, torch.Generator().manual_seed(3), cfg, null)
    torch.manual_seed(123)  # the global RNG must not matter
    b = loss(model, x0, cond, torch.Generator().manual_seed(3), cfg, null)
    assert a.item() == b.item()
    assert torch.equal(calls[0][0], calls[1][0]) and torch.equal(calls[0][2], calls[1][2])


def test_learn_sigma_outputs_are_sliced():
    cfg = ObjectiveConfig(cond_dropout=0.0)
    x0 = torch.randn(4, 2, 4, 4)
    value = loss(
        lambda x, t: torch.cat([torch.zeros_like(x), 1e6 * torch.ones_like(x)], 1),
        x0,
        {},
        torch.Generator().manual_seed(0),
        cfg,
    )
    assert value.item() < 10.0


def test_label_dropout_rates():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(10000, dtype=torch.long)
    dropped = drop_conditions({"y": y}, {"y": 1000}, 0.1, g)["y"]
    frac = (dropped == 1000).float().mean().item()
    assert abs(frac - 0.1) < 0.015 and set(dropped.unique().tolist()) <= {0, 1000}
    assert torch.equal(drop_conditions({"y": y}, {"y": 1000}, 0.0, g)["y"], y)
    assert bool((drop_conditions({"y": y}, {"y": 1000}, 1.0, g)["y"] == 1000).all())


def test_text_dropout_replaces_embedding_mask_and_pooled_together():
    batch, length, dim = 64, 5, 3
    cond = {
        "text_emb": torch.ones(batch, length, dim),
        "text_mask": torch.ones(batch, length, dtype=torch.bool),
        "text_pooled": torch.ones(batch, 7),
    }
    null = {
        "text_emb": torch.full((length, dim), -1.0),
        "text_mask": torch.tensor([True, False, False, False, False]),
        "text_pooled": torch.zeros(7),
    }
    out = drop_conditions(cond, null, 0.5, torch.Generator().manual_seed(0))
    is_null = out["text_pooled"].sum(1) == 0
    assert 10 < int(is_null.sum()) < 54
    assert torch.equal(out["text_emb"][is_null], null["text_emb"].expand(int(is_null.sum()), length, dim))
    assert torch.equal(out["text_mask"][is_null].sum(1), torch.ones(int(is_null.sum()), dtype=torch.long))
    assert bool((out["text_emb"][~is_null] == 1).all()) and bool(out["text_mask"][~is_null].all())


def test_dropout_missing_null_key_names_it():
    with pytest.raises(KeyError, match="text_pooled"):
        drop_conditions({"text_pooled": torch.ones(2, 3)}, {"text_emb": torch.zeros(3)}, 0.5)
    # A null embedding of another length (encoded at another max_length) is named, not a bare expand error.
    with pytest.raises(ValueError, match=r"null_cond\['text_emb'\] has shape \(1, 77, 32\).*\(2, 16, 32\)"):
        drop_conditions({"text_emb": torch.ones(2, 16, 32)}, {"text_emb": torch.zeros(77, 32)}, 0.5)


def test_dropping_every_row_draws_nothing_from_the_global_rng():
    """Guidance distillation builds its unconditional input with p=1 and no generator: it moved the global RNG
    every step."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    out = drop_conditions({"y": torch.zeros(4, dtype=torch.long)}, {"y": 10}, 1.0)
    assert bool((out["y"] == 10).all()) and torch.equal(torch.rand(3), expected)


def test_validation_loss_is_deterministic_and_uses_fixed_t():
    cfg = ObjectiveConfig(process="vp-linear", prediction="eps", t_sampler="logit-normal")
    x0 = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    seen_t = []

    def model(x, t, **cond):
        seen_t.append(t[0].item())
        return 0.3 * x

    torch.manual_seed(0)
    a = validation_loss(model, x0, {}, cfg, num_t=4, seed=7)
    torch.manual_seed(99)
    b = validation_loss(model, x0, {}, cfg, num_t=4, seed=7)
    c = validation_loss(model, x0, {}, cfg, num_t=4, seed=8)
    assert isinstance(a, float) and a == b and a != c
    assert seen_t[:4] == pytest.approx([0.125, 0.375, 0.625, 0.875])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="prediction"):
        ObjectiveConfig(prediction="score")
    with pytest.raises(ValueError, match="t_sampler"):
        ObjectiveConfig(t_sampler="beta")
    with pytest.raises(ValueError, match="unknown process"):
        ObjectiveConfig(process="edm")
    assert math.isclose(ObjectiveConfig().cond_dropout, 0.1)


def test_log_normal_t_sampler_draws_log_normal_noise_to_signal_on_any_process():
    process = build_process("vp-linear")
    g = torch.Generator().manual_seed(0)
    t = TimeSampler("log-normal", p_mean=-0.5, p_std=0.8).times(4000, g, process=process)
    assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1
    log_ratio = -process.log_snr(t.double())  # ln(sigma_t / alpha_t)
    inside = (log_ratio > math.log(0.0101)) & (log_ratio < math.log(150.0))  # away from vp-linear's clamped ends
    assert inside.float().mean() > 0.99
    assert log_ratio[inside].mean().item() == pytest.approx(-0.5, abs=0.05)  # 4 standard errors
    assert log_ratio[inside].std().item() == pytest.approx(0.8, abs=0.05)


@pytest.mark.parametrize("process, prediction", [("vp-linear", "eps"), ("flow", "velocity"), ("sit-gvp", "v")])
def test_default_objective_is_the_plain_regression(process, prediction):
    """New fields at their defaults: MSE at x_t = alpha x0 + sigma eps, drawing t then eps from the generator."""
    cfg = ObjectiveConfig(process=process, prediction=prediction, t_sampler="logit-normal", cond_dropout=0.0)
    assert not cfg.learn_sigma and cfg.preconditioning == "none"
    x0 = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(0))

    def model(x, t, **_):
        return 0.7 * x + t.view(-1, 1, 1, 1)

    got = loss(model, x0, {}, torch.Generator().manual_seed(4), cfg)
    g = torch.Generator().manual_seed(4)
    t = torch.sigmoid(torch.randn(8, generator=g, dtype=torch.float64)).float()
    eps = torch.randn(x0.shape, generator=g)
    p = build_process(process)
    a, s = p.alpha(t).view(-1, 1, 1, 1), p.sigma(t).view(-1, 1, 1, 1)
    da, ds = p.d_alpha(t).view(-1, 1, 1, 1), p.d_sigma(t).view(-1, 1, 1, 1)
    target = {"eps": eps, "velocity": da * x0 + ds * eps, "v": a * eps - s * x0}[prediction]
    assert got.item() == torch.mean((model(a * x0 + s * eps, t) - target) ** 2).item()


@pytest.mark.parametrize(
    "field", ["time_shift", "logit_std", "p_std", "sigma_data", "vlb_weight", "cond_dropout", "logit_mean", "p_mean"]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_objective_numbers_that_are_not_finite_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=rf"objective\.{field} must be"):
        ObjectiveConfig(**{field: value})


def test_time_samplers_refuse_nan_spreads():
    with pytest.raises(ValueError, match="time_shift must be a finite number > 0, got nan"):
        time_shift(torch.tensor([0.5]), float("nan"))
