"""Samplers measured against exact answers: closed-form Gaussian PF-ODE and a reference-integrated mixture."""

import itertools
import math

import numpy as np
import pytest
import torch

from ditcore.processes import build_process
from ditcore.samplers import EMS, SAMPLERS, ems_lambdas, make_generators, noise_from_seeds, sample, time_grid
from ditcore.samplers.analytic import GaussianData, GaussianMixtureData, analytic_model_fn, reference_pf_ode

ODE_SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m", "dpmpp-3m", "dpmpp-2s")
GAUSS = GaussianData(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([0.3, 1.0, 0.5, 2.0]))
MIX = GaussianMixtureData(torch.tensor([[1.5, 0.5], [-1.0, -0.5]]), torch.tensor([0.4, 0.6]), torch.tensor([0.3, 0.7]))


def rmse(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def errors(data, exact, noise, process, sampler, grid, steps_list, prediction="velocity"):
    fn = analytic_model_fn(data, process, prediction)
    return [
        rmse(sample(fn, noise, process=process, prediction=prediction, sampler=sampler, steps=n, time_grid=grid), exact)
        for n in steps_list
    ]


def ratios(errs):
    return [a / b for a, b in itertools.pairwise(errs)]


@pytest.fixture(scope="module")
def gauss_noise():
    return torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def mix_case():
    noise = torch.randn(24, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return noise, {p: reference_pf_ode(MIX, noise, p, 1.0, rtol=1e-8) for p in ("flow", "vp-linear")}


def test_reference_integrator_matches_gaussian_closed_form(gauss_noise):
    for process in ("flow", "vp-linear"):
        ref = reference_pf_ode(GAUSS, gauss_noise[:16], process, 1.0, rtol=1e-9)
        assert rmse(ref, GAUSS.exact_pf_ode(gauss_noise[:16], build_process(process), 1.0)) < 1e-7


@pytest.mark.parametrize("process", ["vp-linear", "vp-cosine", "flow", "sit-gvp"])
@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
def test_every_ode_sampler_converges_on_gaussian(gauss_noise, process, sampler):
    exact = GAUSS.exact_pf_ode(gauss_noise, build_process(process), 1.0)
    (err,) = errors(GAUSS, exact, gauss_noise, process, sampler, "uniform-lambda", [100])
    tol = 0.05 if sampler in ("ddim", "euler") else 0.005  # first- vs higher-order solvers at 100 steps
    assert err < tol, f"{sampler} on {process}: rmse {err}"


@pytest.mark.parametrize("grid", ["uniform-t", "uniform-lambda", "edm", "sd3-shift"])
def test_every_grid_converges(gauss_noise, grid):
    exact = GAUSS.exact_pf_ode(gauss_noise, build_process("flow"), 1.0)
    errs = errors(GAUSS, exact, gauss_noise, "flow", "dpmpp-2m", grid, [10, 80])
    assert errs[1] < 0.01 and errs[1] < errs[0] / 5


@pytest.mark.parametrize("process", ["flow", "vp-linear"])
def test_convergence_orders_gaussian(gauss_noise, process):
    exact = GAUSS.exact_pf_ode(gauss_noise, build_process(process), 1.0)
    steps = [20, 40, 80]
    for r in ratios(errors(GAUSS, exact, gauss_noise, process, "ddim", "uniform-lambda", steps)):
        assert 1.6 <= r <= 2.5  # first order: doubling steps halves the error
    for sampler in ("dpmpp-2m", "dpmpp-2s", "heun"):
        for r in ratios(errors(GAUSS, exact, gauss_noise, process, sampler, "uniform-lambda", steps)):
            assert 3.0 <= r <= 5.5, f"{sampler}: ratio {r}"  # second order: ~4x
    for r in ratios(errors(GAUSS, exact, gauss_noise, process, "dpmpp-3m", "uniform-lambda", steps)):
        assert r >= 4.5, f"dpmpp-3m: ratio {r}"  # third order: ~8x, at least clearly better than 4x


def test_euler_first_order_on_flow(gauss_noise, mix_case):
    exact = GAUSS.exact_pf_ode(gauss_noise, build_process("flow"), 1.0)
    for r in ratios(errors(GAUSS, exact, gauss_noise, "flow", "euler", "uniform-t", [20, 40, 80])):
        assert 1.6 <= r <= 2.5
    noise, refs = mix_case
    for r in ratios(errors(MIX, refs["flow"], noise, "flow", "euler", "uniform-t", [20, 40, 80])):
        assert 1.6 <= r <= 2.5


@pytest.mark.parametrize("process", ["flow", "vp-linear"])
def test_convergence_orders_mixture(mix_case, process):
    noise, refs = mix_case
    steps = [20, 40, 80]
    for r in ratios(errors(MIX, refs[process], noise, process, "dpmpp-2m", "uniform-lambda", steps)):
        assert 3.0 <= r <= 5.5, f"dpmpp-2m ratio {r}"
    for r in ratios(errors(MIX, refs[process], noise, process, "ddim", "uniform-lambda", steps)):
        assert 1.6 <= r <= 2.5, f"ddim ratio {r}"


def test_dpmpp_2m_at_10_steps_far_better_than_euler(gauss_noise, mix_case):
    # flow, the SD3 uniform-t grid: Gaussian and mixture
    exact = GAUSS.exact_pf_ode(gauss_noise, build_process("flow"), 1.0)
    e_2m, e_euler = (errors(GAUSS, exact, gauss_noise, "flow", s, "uniform-t", [10])[0] for s in ("dpmpp-2m", "euler"))
    assert e_2m < e_euler / 3
    noise, refs = mix_case
    e_2m, e_euler = (errors(MIX, refs["flow"], noise, "flow", s, "uniform-t", [10])[0] for s in ("dpmpp-2m", "euler"))
    assert e_2m < e_euler / 3
    # VP diffusion (DiT schedule), log-SNR grid as in the DPM-Solver++ paper
    exact = GAUSS.exact_pf_ode(gauss_noise, build_process("vp-linear"), 1.0)
    e = {
        s: errors(GAUSS, exact, gauss_noise, "vp-linear", s, "uniform-lambda", [10])[0]
        for s in ("dpmpp-2m", "euler", "ddim")
    }
    assert e["dpmpp-2m"] < e["euler"] / 3 and e["dpmpp-2m"] < e["ddim"] / 5


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m", "heun"])
def test_prediction_types_give_the_same_samples(gauss_noise, sampler):
    outs = [
        sample(
            analytic_model_fn(GAUSS, "vp-linear", pred),
            gauss_noise[:32],
            process="vp-linear",
            prediction=pred,
            sampler=sampler,
            steps=12,
        )
        for pred in ("eps", "v", "x0", "velocity")
    ]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-9, atol=1e-9)


def test_eps_prediction_on_pure_noise_start_is_handled():
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = sample(analytic_model_fn(GAUSS, "flow", "eps"), noise, process="flow", prediction="eps", steps=30)
    assert torch.isfinite(out).all()
    assert rmse(out, GAUSS.exact_pf_ode(noise, build_process("flow"), 1.0)) < 0.05


def test_ddpm_equals_ddim_eta_one():
    noise = noise_from_seeds(range(16), (4,), dtype=torch.float64)
    fn = analytic_model_fn(GAUSS, "vp-linear", "eps")
    a = sample(
        fn,
        noise,
        process="vp-linear",
        prediction="eps",
        sampler="ddpm",
        steps=25,
        generators=make_generators(range(100, 116)),
    )
    b = sample(
        fn,
        noise,
        process="vp-linear",
        prediction="eps",
        sampler="ddim",
        eta=1.0,
        steps=25,
        generators=make_generators(range(100, 116)),
    )
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler,kwargs", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpmpp-2m", {})])
def test_samples_have_the_data_distribution(sampler, kwargs):
    n = 1500
    noise = torch.randn(n, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gens = [torch.Generator().manual_seed(i) for i in range(n)] if sampler != "dpmpp-2m" else None
    out = sample(
        analytic_model_fn(GAUSS, "vp-linear", "eps"),
        noise,
        process="vp-linear",
        prediction="eps",
        sampler=sampler,
        steps=50,
        time_grid="uniform-lambda",
        generators=gens,
        **kwargs,
    )
    torch.testing.assert_close(out.mean(0), GAUSS.mean, atol=0.15, rtol=0)
    torch.testing.assert_close(out.std(0), GAUSS.std, atol=0, rtol=0.12)


class ClassGaussians:
    """Class-conditional Gaussian data: class c has mean means[c]; class num_classes (null) is the marginal."""

    def __init__(self):
        self.means = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
        self.calls = []

    def model_fn(self, process, prediction):
        proc = build_process(process)
        per_class = [analytic_model_fn(GaussianData(m, torch.tensor([0.3, 0.3])), proc, prediction) for m in self.means]
        uncond = analytic_model_fn(
            GaussianMixtureData(self.means, torch.full((3,), 0.3), torch.ones(3)), proc, prediction
        )

        def fn(x, t, y):
            self.calls.append(x.shape[0])
            out = uncond(x, t)
            for c, f in enumerate(per_class):
                mask = y == c
                if mask.any():
                    out[mask] = f(x[mask], t[mask])
            return out

        return fn


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_per_seed_determinism_under_batch_composition(sampler):
    """Sample i depends only on its seed/label: alone, in a batch, at another position, with CFG."""
    data = ClassGaussians()
    process = "vp-cosine" if sampler == "ddpm-learned" else "flow"  # learned variance: variance-preserving only
    fn = data.model_fn(process, "velocity")
    extra = {}
    if sampler == "ddpm-learned":
        base = fn

        def fn(x, t, y):  # [prediction; variance output o in [-1, 1]] depending on the sample
            return torch.cat([base(x, t, y), torch.tanh(x)], 1)

    if sampler == "dpmsolver-v3":
        extra["ems"] = EMS.degenerate(ems_lambdas(process, 201), (2,))
    seeds, labels = [11, 12, 13, 14], torch.tensor([0, 1, 2, 1])

    def run(idx):
        return sample(
            fn,
            noise_from_seeds([seeds[i] for i in idx], (2,), dtype=torch.float64),
            process=process,
            prediction="velocity",
            sampler=sampler,
            steps=6,
            cond={"y": labels[idx]},
            uncond={"y": 3},
            guidance=2.0,
            generators=make_generators([seeds[i] for i in idx]),
            eta=0.7,
            **extra,
        )

    full = run([0, 1, 2, 3])
    single = run([2])
    permuted = run([3, 2, 0])
    torch.testing.assert_close(single[0], full[2], rtol=0, atol=1e-12)
    torch.testing.assert_close(permuted[1], full[2], rtol=0, atol=1e-12)
    torch.testing.assert_close(permuted[0], full[3], rtol=0, atol=1e-12)


def test_classifier_free_guidance_batches_and_scales():
    data = ClassGaussians()
    fn = data.model_fn("flow", "velocity")
    noise = noise_from_seeds(range(200), (2,), dtype=torch.float64)
    y = torch.zeros(200, dtype=torch.long)
    kw = dict(process="flow", prediction="velocity", sampler="dpmpp-2m", steps=10)
    plain = sample(fn, noise, cond={"y": y}, **kw)
    assert set(data.calls) == {200}  # no guidance: conditional pass only
    data.calls.clear()
    same = sample(fn, noise, cond={"y": y}, uncond={"y": 3}, guidance=1.0, **kw)
    torch.testing.assert_close(same, plain)
    guided = sample(fn, noise, cond={"y": y}, uncond={"y": torch.full((200,), 3)}, guidance=3.0, **kw)
    assert set(data.calls[-10:]) == {400}  # one batched cond+uncond call per step
    mean0 = data.means[0]
    # guidance pushes samples further toward (and beyond) the class mean, away from the others
    assert (guided - mean0).norm(dim=1).mean() < (plain - mean0).norm(dim=1).mean() + 0.5
    assert (guided.mean(0) - mean0)[0] > -0.1
    zero = sample(fn, noise, cond={"y": y}, uncond={"y": 3}, guidance=0.0, **kw)
    torch.testing.assert_close(zero, sample(fn, noise, cond={"y": torch.full((200,), 3)}, **kw))


def test_guidance_interval_limits_the_guided_steps():
    data = ClassGaussians()
    fn = data.model_fn("flow", "velocity")
    noise = noise_from_seeds(range(8), (2,), dtype=torch.float64)
    sample(
        fn,
        noise,
        process="flow",
        prediction="velocity",
        sampler="euler",
        steps=10,
        time_grid="uniform-t",
        cond={"y": torch.zeros(8, dtype=torch.long)},
        uncond={"y": 3},
        guidance=4.0,
        guidance_interval=(0.25, 0.65),
    )
    # grid t = 1.0, 0.9, ..., 0.1: guided (16-row batches) exactly at 0.6, 0.5, 0.4, 0.3
    assert data.calls == [8, 8, 8, 8, 16, 16, 16, 16, 8, 8]


def test_time_grids_shape_and_endpoints():
    for name in ("vp-linear", "vp-cosine", "flow", "sit-gvp"):
        p = build_process(name)
        for kind in ("default", "uniform-t", "uniform-lambda", "edm", "sd3-shift"):
            ts = time_grid(p, 7, kind)
            assert ts.shape == (8,) and ts.dtype == torch.float64
            assert ts[0] == p.t_max and ts[-1] == p.t_clean
            assert torch.all(ts[1:] < ts[:-1]), (name, kind, ts)
    flow = build_process("flow")
    torch.testing.assert_close(
        time_grid(flow, 4, "uniform-t"), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    )
    shifted = time_grid(flow, 4, "sd3-shift", shift=3.0)
    torch.testing.assert_close(shifted[2], torch.tensor(0.75, dtype=torch.float64))
    lam = flow.log_snr(time_grid(flow, 6, "uniform-lambda")[1:-1])
    torch.testing.assert_close(lam[1:] - lam[:-1], torch.full((4,), (lam[-1] - lam[0]).item() / 4, dtype=torch.float64))
    edm = time_grid(flow, 6, "edm")[1:-1]
    sig = flow.sigma(edm) / flow.alpha(edm)
    assert sig[0].item() == pytest.approx(80.0) and sig[-1].item() == pytest.approx(0.002)
    # vp-linear at full resolution walks the 1000 discrete DiT steps exactly (then lands on clean data)
    ts = time_grid(build_process("vp-linear"), 1000, "uniform-t")
    torch.testing.assert_close(ts[:-1] * 999, torch.arange(999, -1, -1, dtype=torch.float64))


def test_bad_arguments_name_the_value():
    fn = analytic_model_fn(GAUSS, "flow", "velocity")
    noise = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        sample(fn, noise, process="flow", prediction="velocity", sampler="plms")
    with pytest.raises(ValueError, match="unknown time_grid 'cosine'"):
        sample(fn, noise, process="flow", prediction="velocity", time_grid="cosine")
    with pytest.raises(ValueError, match="steps"):
        sample(fn, noise, process="flow", prediction="velocity", steps=0)
    with pytest.raises(ValueError, match="uncond"):
        sample(fn, noise, process="flow", prediction="velocity", cond={"y": torch.zeros(2)}, guidance=2.0)
    with pytest.raises(ValueError, match="one generator per sample"):
        sample(fn, noise, process="flow", prediction="velocity", sampler="ddpm", generators=make_generators([1]))
    nan = float("nan")  # NaN fails every comparison: the checks must not let it through
    cond, uncond = {"y": torch.zeros(2)}, {"y": torch.ones(2)}
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0, got nan"):
        sample(fn, noise, process="flow", prediction="velocity", cond=cond, uncond=uncond, guidance=nan)
    # Below 0 was run without a word (serving refuses it).
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0, got -2"):
        sample(fn, noise, process="flow", prediction="velocity", cond=cond, uncond=uncond, guidance=-2.0)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\] .*, got nan"):
        sample(fn, noise, process="flow", prediction="velocity", sampler="ddim", eta=nan)
    # Above 1 the eps coefficient was clamped to 0 and the samples' variance came out wrong without an error.
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\] .*, got 3.0"):
        sample(fn, noise, process="flow", prediction="velocity", sampler="ddim", eta=3.0)
    # A non-finite SDE norm was reported as an infinite diffusion at t_max, "alpha = 0", on a path where it is not.
    with pytest.raises(ValueError, match="sde_diffusion_norm must be a finite number, got nan"):
        sample(fn, noise, process="vp-linear", prediction="eps", sampler="sde", sde_diffusion_norm=nan)
    # steps: numpy's integers are integers (a value read from an array), a bool is not one step.
    out = sample(fn, noise, process="flow", prediction="velocity", steps=np.int64(3))
    assert torch.equal(out, sample(fn, noise, process="flow", prediction="velocity", steps=3))
    with pytest.raises(ValueError, match="steps must be a positive integer, got True"):
        sample(fn, noise, process="flow", prediction="velocity", steps=True)
    with pytest.raises(ValueError, match="rho must be a finite number > 0, got nan"):
        sample(fn, noise, process="flow", prediction="velocity", time_grid="edm", rho=nan)
    with pytest.raises(ValueError, match="grid shift must be a finite number > 0, got nan"):
        sample(fn, noise, process="flow", prediction="velocity", time_grid="sd3-shift", grid_shift=nan)


def test_model_fn_from_model_slices_learn_sigma():
    from ditcore.samplers import model_fn_from_model

    class Fake(torch.nn.Module):
        in_channels = 2

        def forward(self, x, t, y):
            return torch.cat([x, 100 + x], 1)

    out = model_fn_from_model(Fake())(torch.ones(3, 2, 4, 4), torch.zeros(3), y=torch.zeros(3, dtype=torch.long))
    assert out.shape == (3, 2, 4, 4) and float(out.max()) == 1.0
    assert math.isfinite(float(out.sum()))


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim", "ddpm", "sde"])
def test_the_default_grid_on_a_variance_exploding_path_keeps_the_data_spread(sampler):
    # edm-ve: uniform t is uniform sigma, whose last step jumps from 80/steps to the denoised mean (std ~0.06 here).
    torch.manual_seed(0)
    data = GaussianData(torch.zeros(16, dtype=torch.float64), torch.full((16,), 0.5, dtype=torch.float64))
    proc = build_process("edm-ve")
    noise = torch.randn(2000, 16, dtype=torch.float64)

    def std(grid: str) -> float:
        gens = make_generators(list(range(len(noise)))) if sampler in ("ddpm", "sde") else None
        fn = analytic_model_fn(data, proc, "x0")
        kw = dict(process=proc, prediction="x0", sampler=sampler, steps=18, generators=gens, time_grid=grid)
        return float(sample(fn, noise, **kw).std())

    assert std("uniform-t") < 0.15  # what the default used to be: collapsed
    assert 0.35 < std("default") < 0.6  # data std 0.5 (ancestral ddpm at 18 steps: 0.37)
