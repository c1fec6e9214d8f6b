"""SiT reverse-SDE sampler: end distribution against exact Gaussian data, last-step rules, coefficient forms."""

import pytest
import torch

from ditcore.processes import build_process
from ditcore.samplers import make_generators, sample
from ditcore.samplers.analytic import CorrelatedGaussianData, analytic_model_fn
from ditcore.samplers.grids import grid_point
from ditcore.samplers.guidance import Denoiser
from ditcore.samplers.sde import diffusion_coefficient

DATA = CorrelatedGaussianData(torch.tensor([1.0, -0.5]), torch.tensor([[0.25, 0.15], [0.15, 1.0]], dtype=torch.float64))
N = 3000


def moment_errors(out):
    """(max |mean - mu| in standard errors, max |cov - Sigma| relative to the data scale)."""
    se = torch.sqrt(torch.diagonal(DATA.cov) / out.shape[0])
    mean_err = float(((out.mean(0) - DATA.mean) / se).abs().max())
    cov_err = float((torch.cov(out.T) - DATA.cov).abs().max() / DATA.cov.diagonal().max())
    return mean_err, cov_err


def run(process, form, steps, last_step="mean", prediction="velocity", t_start=None):
    torch.manual_seed(0)  # the noise of the SDE steps (no per-sample generators: faster for 3000 samples)
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sde = {"sde_diffusion": form, "sde_last_step": last_step}
    fn = analytic_model_fn(DATA, process, prediction)
    return sample(fn, noise, process=process, prediction=prediction, sampler="sde", steps=steps, t_start=t_start, **sde)


@pytest.mark.parametrize("process", ["flow", "sit-gvp"])
@pytest.mark.parametrize("form", ["sigma", "decreasing"])
def test_sde_end_distribution_is_the_data_distribution(process, form):
    """Mean within 4 standard errors and covariance within sampling error at 100 steps; visibly off at 6 steps."""
    mean_err, cov_err = moment_errors(run(process, form, 100))
    assert mean_err < 4.0 and cov_err < 0.1, (mean_err, cov_err)
    coarse = moment_errors(run(process, form, 6))
    assert coarse[1] > 2 * cov_err or coarse[0] > 2 * mean_err, (coarse, (mean_err, cov_err))


def test_sbdm_on_vp_is_the_reverse_diffusion_sde():
    """w_t = g_t^2 on the DiT schedule: the classic reverse-time SDE, which also ends on the data distribution."""
    mean_err, cov_err = moment_errors(run("vp-linear", "sbdm", 100, prediction="eps"))
    assert mean_err < 4.0 and cov_err < 0.1, (mean_err, cov_err)
    p = grid_point(build_process("vp-linear"), 0.5)
    g2 = 2 * p.sigma * (p.d_sigma - p.d_alpha / p.alpha * p.sigma)  # d(sigma^2)/dt - 2 (alpha'/alpha) sigma^2
    assert diffusion_coefficient(p, "sbdm") == pytest.approx(g2)
    assert diffusion_coefficient(p, "sigma", 0.5) == pytest.approx(p.sigma)  # w = 2 D with SiT's D = norm sigma


def test_sbdm_is_infinite_at_pure_noise():
    with pytest.raises(ValueError, match="infinite"):
        run("flow", "sbdm", 10)
    mean_err, cov_err = moment_errors(run("flow", "sbdm", 100, t_start=0.98))  # SiT starts SBDM off t = 1 too
    assert mean_err < 4.0 and cov_err < 0.1, (mean_err, cov_err)


def test_last_step_rules():
    """tweedie returns x0_hat at the last grid point; mean = the drift step without noise; euler = the ODE step."""
    proc = build_process("flow")
    fn = analytic_model_fn(DATA, proc, "velocity")
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs = {}
    for last in ("mean", "tweedie", "euler"):
        outs[last] = sample(
            fn,
            noise,
            process=proc,
            prediction="velocity",
            sampler="sde",
            steps=5,
            sde_last_step=last,
            generators=make_generators(range(8)),
        )
    # rebuild the state before the last step (same generators -> same noise) with a 4-step grid ending at t = 0.2
    gens = make_generators(range(8))
    from ditcore.samplers.sde import sample_sde

    ts = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], dtype=torch.float64)
    state = sample_sde(Denoiser(fn, proc, "velocity"), noise.clone(), ts[:-1], proc, generators=gens)
    x0, eps = Denoiser(fn, proc, "velocity")(state, 0.2)
    p = grid_point(proc, 0.2)
    velocity = p.d_alpha * x0 + p.d_sigma * eps
    w = diffusion_coefficient(p, "sigma")
    torch.testing.assert_close(outs["tweedie"], x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(outs["euler"], state - 0.2 * velocity, rtol=0, atol=1e-12)
    torch.testing.assert_close(outs["mean"], state - 0.2 * (velocity + 0.5 * w * eps / p.sigma), rtol=0, atol=1e-12)


def test_bad_sde_options_name_the_value():
    fn = analytic_model_fn(DATA, "flow", "velocity")
    noise = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown sde_diffusion 'cubic'"):
        sample(fn, noise, process="flow", prediction="velocity", sampler="sde", sde_diffusion="cubic")
    with pytest.raises(ValueError, match="unknown sde_last_step 'none'"):
        sample(fn, noise, process="flow", prediction="velocity", sampler="sde", sde_last_step="none")
