"""Processes: the discrete DiT schedule is matched exactly, derivatives/log-SNR are consistent, conversions invert."""

import math

import numpy as np
import pytest
import torch

from ditcore.processes import (
    PREDICTIONS,
    PROCESS_NAMES,
    build_process,
    prediction_target,
    to_x0_eps,
)


def test_vp_linear_matches_adm_discrete_schedule():
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alpha_bar = np.cumprod(1.0 - betas)
    p = build_process("vp-linear")
    t = torch.arange(1000, dtype=torch.float64) / 999.0
    np.testing.assert_allclose(p.alpha(t).numpy() ** 2, alpha_bar, rtol=1e-9, atol=0)
    # relative accuracy of sigma^2 = 1 - alpha_bar even where it is ~1e-4
    np.testing.assert_allclose(p.sigma(t).numpy() ** 2, 1.0 - alpha_bar, rtol=1e-5)
    assert float(p.alpha(p.t_clean)) == 1.0 and float(p.sigma(p.t_clean)) == 0.0


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_derivatives_match_finite_differences(name):
    p = build_process(name)
    t = torch.linspace(0.02, 0.98, 11, dtype=torch.float64)
    h = 1e-5
    fd_a = (p.alpha(t + h) - p.alpha(t - h)) / (2 * h)
    fd_s = (p.sigma(t + h) - p.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(p.d_alpha(t), fd_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p.d_sigma(t), fd_s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_log_snr_inverse_and_monotone(name):
    p = build_process(name)
    t = torch.linspace(0.001, 0.999, 50, dtype=torch.float64)
    lam = p.log_snr(t)
    assert torch.all(lam[1:] < lam[:-1]), "log-SNR must decrease with t"
    torch.testing.assert_close(lam, torch.log(p.alpha(t) / p.sigma(t)))
    torch.testing.assert_close(p.t_from_log_snr(lam), t, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_endpoints(name):
    p = build_process(name)
    assert p.t_min == 0.0 and p.t_max == 1.0
    assert float(p.sigma(p.t_clean)) == 0.0 and float(p.alpha(p.t_clean)) == pytest.approx(1.0)
    assert math.isinf(float(p.log_snr(p.t_clean)))
    if name != "vp-linear":  # the DiT schedule keeps alpha_bar(1) = 4e-5 > 0
        assert float(p.alpha(1.0)) == 0.0 and float(p.log_snr(1.0)) == -math.inf


def test_float32_inputs_keep_dtype():
    p = build_process("vp-linear")
    t = torch.rand(5)
    assert p.alpha(t).dtype == torch.float32 and p.log_snr(t).dtype == torch.float32


def test_flow_and_sit_linear_are_the_same_interpolant():
    t = torch.rand(7, dtype=torch.float64)
    a, b = build_process("flow"), build_process("sit-linear")
    torch.testing.assert_close(a.alpha(t), 1 - t)
    torch.testing.assert_close(b.sigma(t), t)
    assert b.name == "sit-linear"


@pytest.mark.parametrize("name", PROCESS_NAMES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_conversions_invert(name, prediction):
    p = build_process(name)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)
    a = p.alpha(t).view(-1, 1, 1, 1)
    s = p.sigma(t).view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    target = prediction_target(p, prediction, x0, eps, t)
    x0_hat, eps_hat = to_x0_eps(p, prediction, target, x_t, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_velocity_target_is_time_derivative_of_x_t():
    p = build_process("vp-cosine")
    x0, eps = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    h = 1e-6
    x_of = lambda tt: p.alpha(tt)[:, None] * x0 + p.sigma(tt)[:, None] * eps  # noqa: E731
    torch.testing.assert_close(prediction_target(p, "velocity", x0, eps, t), (x_of(t + h) - x_of(t - h)) / (2 * h))


def test_bad_names_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown process 'vp-quadratic'"):
        build_process("vp-quadratic")
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        prediction_target(build_process("flow"), "score", torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1))
    with pytest.raises(ValueError, match="alpha_t = 0"):
        to_x0_eps(build_process("flow"), "eps", torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1))


def test_vp_process_names_are_variance_preserving():
    from ditcore.processes import VP_PROCESS_NAMES

    t = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
    for name in VP_PROCESS_NAMES:
        p = build_process(name)
        torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t))


def test_edm_ve_process_is_x0_plus_sigma_noise():
    p = build_process("edm-ve")
    t = torch.linspace(0.01, 0.99, 11, dtype=torch.float64)
    assert bool((p.alpha(t) == 1).all())
    torch.testing.assert_close(p.sigma(t), 80.0 * t)
    assert (p.t_min, p.t_max, p.t_clean) == (0.0, 1.0, 0.0) and float(p.sigma(0.0)) == 0.0
    h = 1e-6
    torch.testing.assert_close(p.d_sigma(t), (p.sigma(t + h) - p.sigma(t - h)) / (2 * h))
    torch.testing.assert_close(p.d_alpha(t), torch.zeros_like(t))
    torch.testing.assert_close(p.log_snr(t), -torch.log(80.0 * t))  # lambda = -ln(sigma) when alpha = 1
    torch.testing.assert_close(p.t_from_log_snr(p.log_snr(t)), t)
    assert math.isinf(float(p.log_snr(p.t_clean)))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_edm_ve_prediction_conversions_invert(prediction):
    p = build_process("edm-ve")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([1e-4, 0.001, 0.01, 0.1, 0.5, 1.0], dtype=torch.float64)
    x_t = x0 + 80.0 * t.view(-1, 1, 1, 1) * eps
    x0_hat, eps_hat = to_x0_eps(p, prediction, prediction_target(p, prediction, x0, eps, t), x_t, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_unknown_process_lists_edm_ve():
    with pytest.raises(ValueError, match="edm-ve"):
        build_process("ve")
