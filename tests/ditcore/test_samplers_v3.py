"""DPM-Solver-v3: the EMS estimator against closed-form Gaussian statistics, storage, and exactness of the solver."""

import itertools
import math

import pytest
import torch

from ditcore.processes import build_process
from ditcore.samplers import EMS, EMSEstimator, ems_lambdas, estimate_ems, sample, time_grid
from ditcore.samplers.analytic import CorrelatedGaussianData, GaussianData, analytic_model_fn, gaussian_ems
from ditcore.samplers.ddim import sample_ddim
from ditcore.samplers.dpm_solver_v3 import sample_dpmsolver_v3
from ditcore.samplers.grids import grid_point
from ditcore.samplers.guidance import Denoiser

GAUSS = GaussianData(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([0.3, 1.0, 0.5, 2.0]))
CORR = CorrelatedGaussianData(
    torch.tensor([0.5, -1.0, 1.5]),
    torch.tensor([[1.0, 0.6, 0.2], [0.6, 0.8, -0.3], [0.2, -0.3, 0.5]], dtype=torch.float64),
)
VP = build_process("vp-linear")


def big_gaussian(d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    std = torch.exp(torch.empty(d, dtype=torch.float64).uniform_(math.log(0.1), math.log(2.0), generator=g))
    return GaussianData(torch.randn(d, generator=g, dtype=torch.float64), std)


def exact_state(data, noise, t):
    """The exact PF-ODE state at time t of the trajectory that starts at noise at t = 1 (diagonal Gaussian)."""
    a, s = VP.coefficients(1.0)[:2]
    z = (noise - a * data.mean) / torch.sqrt(a * a * data.std**2 + s * s)
    a, s = VP.coefficients(t)[:2]
    return a * data.mean + torch.sqrt(a * a * data.std**2 + s * s) * z


@pytest.mark.parametrize("process,prediction,method", [("vp-linear", "eps", "jvp"), ("flow", "velocity", "fd")])
def test_estimator_matches_closed_form_for_diagonal_gaussian(process, prediction, method):
    """x0_hat is affine with a diagonal Jacobian: l is exact, f is constant (s = 0) and b = -l' mu."""
    lam = torch.linspace(-5.0, 5.0, 101, dtype=torch.float64)
    x0 = GAUSS.sample(64, torch.Generator().manual_seed(0))
    est = estimate_ems(
        analytic_model_fn(GAUSS, process, prediction),
        [x0],
        process=process,
        prediction=prediction,
        lambdas=lam,
        method=method,
    )
    ref = gaussian_ems(GAUSS, lam)
    torch.testing.assert_close(est.l, ref.l, rtol=0, atol=1e-7)
    assert float(est.s.abs().max()) == 0.0 and float(ref.s.abs().max()) == 0.0
    torch.testing.assert_close(est.b, ref.b, rtol=0, atol=2e-4)  # l' by fourth-order differences on the grid
    assert float(ref.b.abs().max()) > 0.5


def test_estimator_matches_closed_form_for_correlated_gaussian():
    """Off-diagonal covariance: f varies, so s and b are non-trivial; estimates converge like 1/sqrt(n)."""
    lam = torch.linspace(-4.0, 4.0, 41, dtype=torch.float64)
    fn = analytic_model_fn(CORR, "flow", "velocity")
    est = estimate_ems(
        fn,
        [CORR.sample(8192, torch.Generator().manual_seed(0))],
        process="flow",
        prediction="velocity",
        lambdas=lam,
        method="fd",
        generator=torch.Generator().manual_seed(1),
    )
    ref = gaussian_ems(CORR, lam)
    assert float(ref.s.abs().max()) > 1.0 and float(ref.s.min()) < -1.0  # s is far from 0 somewhere
    torch.testing.assert_close(est.l, ref.l, rtol=0, atol=0.01)
    torch.testing.assert_close(est.s, ref.s, rtol=0, atol=0.03)
    torch.testing.assert_close(est.b, ref.b, rtol=0, atol=0.01)


def test_jvp_and_finite_differences_agree():
    lam = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    fn = analytic_model_fn(CORR, "vp-linear", "v")
    x0 = CORR.sample(512, torch.Generator().manual_seed(0))
    out = {
        m: estimate_ems(
            fn,
            [x0],
            process="vp-linear",
            prediction="v",
            lambdas=lam,
            method=m,
            generator=torch.Generator().manual_seed(1),
        )
        for m in ("jvp", "fd")
    }
    for name in ("l", "s", "b"):
        torch.testing.assert_close(getattr(out["jvp"], name), getattr(out["fd"], name), rtol=0, atol=1e-4)


def test_batches_and_workers_merge_to_the_same_statistics():
    """Sums over batches, split across workers by batch or by lambda node, give identical EMS."""
    lam = torch.linspace(-3.0, 3.0, 9, dtype=torch.float64)
    fn = analytic_model_fn(CORR, "flow", "velocity")
    b1, b2 = CORR.sample(256, torch.Generator().manual_seed(0)), CORR.sample(256, torch.Generator().manual_seed(1))

    def estimator():
        return EMSEstimator(fn, process="flow", prediction="velocity", lambdas=lam, method="fd")

    one = estimator()
    one.update(b1, generator=torch.Generator().manual_seed(5))
    one.update(b2, generator=torch.Generator().manual_seed(6))
    by_batch_a, by_batch_b = estimator(), estimator()
    by_batch_a.update(b1, generator=torch.Generator().manual_seed(5))
    by_batch_b.update(b2, generator=torch.Generator().manual_seed(6))
    by_batch_a.merge(by_batch_b.state_dict())
    by_node = [estimator(), estimator()]
    for part, nodes in zip(by_node, (range(4), range(4, 9))):
        part.update(b1, generator=torch.Generator().manual_seed(5), nodes=nodes)
        part.update(b2, generator=torch.Generator().manual_seed(6), nodes=nodes)
    by_node[0].merge(by_node[1])
    ref = one.finalize()
    for other in (by_batch_a.finalize(), by_node[0].finalize()):
        for name in ("l", "s", "b"):
            torch.testing.assert_close(getattr(other, name), getattr(ref, name), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no samples"):
        part = estimator()
        part.update(b1, nodes=[0])
        part.finalize()


def test_ems_dict_round_trip_and_validation():
    ems = gaussian_ems(CORR, torch.linspace(-2.0, 2.0, 9, dtype=torch.float64))
    state = ems.to_dict(dtype=torch.float64)
    assert set(state) == {"lambdas", "l", "s", "b"} and all(isinstance(v, torch.Tensor) for v in state.values())
    back = EMS.from_dict(state)
    for name in ("lambdas", "l", "s", "b"):
        torch.testing.assert_close(getattr(back, name), getattr(ems, name), rtol=0, atol=0)
    assert EMS.from_dict(ems.to_dict()).l.dtype == torch.float32  # default storage dtype
    with pytest.raises(KeyError, match="lacks"):
        EMS.from_dict({k: v for k, v in state.items() if k != "b"})
    bent = dict(state, lambdas=state["lambdas"] ** 3)
    with pytest.raises(ValueError, match="uniformly spaced"):
        EMS.from_dict(bent)


@pytest.mark.parametrize("steps", [3, 5, 10])
def test_v3_with_closed_form_ems_is_exact_on_gaussian(steps):
    """With the exact EMS g is constant, so every step is exact up to quadrature: the only error left is the
    final x0_hat jump into sigma = 0, which every sampler shares."""
    data = big_gaussian()
    noise = torch.randn(64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fn = analytic_model_fn(data, VP, "eps")
    ems = gaussian_ems(data, ems_lambdas(VP))
    out, nfe = sample(
        fn, noise, process=VP, prediction="eps", sampler="dpmsolver-v3", steps=steps, ems=ems, return_nfe=True
    )
    assert nfe == steps
    t_last = float(time_grid(VP, steps, "uniform-lambda")[-2])  # the default grid's last point is an EMS node
    ref = Denoiser(fn, VP, "eps")(exact_state(data, noise, t_last), t_last)[0]
    assert float((out - ref).abs().max()) < 1e-7
    dpmpp = sample(fn, noise, process=VP, prediction="eps", sampler="dpmpp-2m", steps=steps)
    assert float((dpmpp - ref).abs().max()) > 1e-2


def test_v3_is_exact_from_pure_noise_to_sigma_zero():
    """flow starts at alpha = 0: below the EMS grid the statistics are degenerate (true l -> 1 there) and after the
    last evaluation the solver steps on to the end of the grid; with a wide grid the whole path is exact."""
    flow = build_process("flow")
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fn = analytic_model_fn(GAUSS, flow, "velocity")
    exact = GAUSS.exact_pf_ode(noise, flow, 1.0)
    wide = gaussian_ems(GAUSS, ems_lambdas(flow, 1201, sigma_max=1e4, sigma_min=1e-5))
    for steps in (1, 2, 5):
        out = sample(fn, noise, process=flow, prediction="velocity", sampler="dpmsolver-v3", steps=steps, ems=wide)
        assert float((out - exact).abs().max()) < 1e-6, steps
    dpmpp = sample(fn, noise, process=flow, prediction="velocity", sampler="dpmpp-2m", steps=5)
    assert float((dpmpp - exact).abs().max()) > 1e-2


def test_v3_with_estimated_ems_through_a_dict():
    """End to end: estimate from data samples, store as a plain dict, sample: far more accurate than DPM++ 2M."""
    data = big_gaussian(d=16, seed=3)
    fn = analytic_model_fn(data, VP, "eps")
    ems = estimate_ems(
        fn,
        [data.sample(128, torch.Generator().manual_seed(0))],
        process=VP,
        prediction="eps",
        lambdas=ems_lambdas(VP, 241),
        method="fd",
    )
    noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t_last = float(time_grid(VP, 5, "uniform-lambda")[-2])
    ref = Denoiser(fn, VP, "eps")(exact_state(data, noise, t_last), t_last)[0]
    v3 = sample(fn, noise, process=VP, prediction="eps", sampler="dpmsolver-v3", steps=5, ems=ems.to_dict())
    dpmpp = sample(fn, noise, process=VP, prediction="eps", sampler="dpmpp-2m", steps=5)
    e_v3, e_2m = (float((o - ref).pow(2).mean().sqrt()) for o in (v3, dpmpp))
    assert e_v3 < 1e-3 and e_v3 < e_2m / 50, (e_v3, e_2m)


def test_degenerate_ems_is_dpm_solver_pp():
    """l = 1, s = 0, b = 0: order 1 is DDIM; order 2 integrates the linear interpolant of x0_hat in lambda exactly."""
    data = big_gaussian(d=8)
    fn = analytic_model_fn(data, VP, "eps")
    noise = torch.randn(32, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = time_grid(VP, 10, "uniform-lambda")
    deg = EMS.degenerate(ems_lambdas(VP, 9 * 120 + 1), (8,))  # the 10 grid points fall on EMS nodes
    kw = dict(ems=deg, corrector=False, lower_order_final=False)
    first = sample_dpmsolver_v3(Denoiser(fn, VP, "eps"), noise, ts, VP, order=1, **kw)
    torch.testing.assert_close(first, sample_ddim(Denoiser(fn, VP, "eps"), noise, ts, VP), rtol=0, atol=1e-8)
    second = sample_dpmsolver_v3(Denoiser(fn, VP, "eps"), noise, ts, VP, order=2, **kw)
    # reference: x_t = sigma_t/sigma_s x_s + alpha_t [(1 - e^-h) x0_s + (h - 1 + e^-h) (x0_s - x0_prev) / h_prev]
    den, x, prev = Denoiser(fn, VP, "eps"), noise.clone(), None
    points = [grid_point(VP, float(t)) for t in ts]
    for cur, nxt in itertools.pairwise(points):
        x0 = den(x, cur.t)[0]
        if nxt.sigma == 0.0:
            x = x0
            break
        h = nxt.log_snr - cur.log_snr
        step = (nxt.sigma / cur.sigma) * x + nxt.alpha * (1 - math.exp(-h)) * x0
        if prev is not None:
            step = step + nxt.alpha * (h - 1 + math.exp(-h)) * (x0 - prev[1]) / (cur.log_snr - prev[0])
        prev, x = (cur.log_snr, x0), step
    torch.testing.assert_close(second, x, rtol=0, atol=1e-7)


def test_v3_needs_ems():
    with pytest.raises(ValueError, match="needs ems"):
        sample(
            analytic_model_fn(GAUSS, VP, "eps"),
            torch.zeros(2, 4, dtype=torch.float64),
            process=VP,
            prediction="eps",
            sampler="dpmsolver-v3",
        )


def test_quadrature_and_grid_derivative_orders():
    """The cumulative quadrature is exact for cubics and the lambda-derivative for quartics (fourth order)."""
    from ditcore.samplers.dpm_solver_v3 import cumulative_integral
    from ditcore.samplers.ems import grid_derivative

    x = torch.linspace(-1.0, 2.0, 13, dtype=torch.float64)
    h = float(x[1] - x[0])
    antiderivative = x**4 / 4 - x**3 / 3 + 3 * x
    torch.testing.assert_close(cumulative_integral(x**3 - x**2 + 3, h), antiderivative - antiderivative[0])
    torch.testing.assert_close(grid_derivative(x**4 - 2 * x**3 + x, h), 4 * x**3 - 6 * x**2 + 1)
    errs = [
        float(
            (cumulative_integral(torch.exp(g), float(g[1] - g[0])) - torch.expm1(g - g[0]) * math.exp(-1)).abs().max()
        )
        for g in (torch.linspace(-1.0, 1.0, 9, dtype=torch.float64), torch.linspace(-1.0, 1.0, 17, dtype=torch.float64))
    ]
    assert 12 < errs[0] / errs[1] < 20  # halving the spacing: ~16x
