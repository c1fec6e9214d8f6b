"""Sampler accuracy vs model evaluations (NFE): RMSE of the end point against the exact PF-ODE solution.

Data with a closed-form denoiser stand in for a perfect network: a 4-D Gaussian (exact end point in closed
form) and a 2-component 2-D Gaussian mixture (reference by adaptive DOP853 integration, rtol 1e-10).

Sections (--sections, comma-separated; all by default):
  main       for each process and sampler, RMSE at NFE budgets 5, 10, 20, 50 (the largest step count whose NFE
             fits the budget; Heun and 2S spend two evaluations per step) and, in brackets, the ratio to the
             baseline DDIM (eta = 0) at the same budget (> 1 = more accurate), on the grid --grid. DDPM and the
             SDE sampler are stochastic and have no single ODE end point, so they are not listed.
  v3         DPM-Solver-v3 against DPM-Solver++ 2M/3M at NFE 5, 10, 20 on each sampler's default grid, with EMS
             estimated from data samples (and, for the Gaussian, the closed-form EMS).
  diffusers  DPM-Solver++ 2M against diffusers' DPMSolverMultistepScheduler on a 64-D Gaussian (vp-linear,
             DiT betas); diffusers is a dependency of ditscale (pipelines/export), never imported by ditcore.

    .venv/bin/python bench/samplers.py [--grid uniform-lambda] [--data both] [--samples 256] [--sections main,v3]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from ditcore.processes import build_process
from ditcore.samplers import default_grid_kind, ems_lambdas, estimate_ems, sample
from ditcore.samplers.analytic import (
    GaussianData,
    GaussianMixtureData,
    analytic_model_fn,
    gaussian_ems,
    reference_pf_ode,
)

SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m", "dpmpp-3m", "dpmpp-2s")
PROCESSES = ("vp-linear", "vp-cosine", "flow", "sit-gvp")
BUDGETS = (5, 10, 20, 50)
V3_BUDGETS = (5, 10, 20)
BASELINE = "ddim"
EMS_SAMPLES, EMS_NODES = 8192, 601


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean square difference."""
    return (a - b).pow(2).mean().sqrt().item()


def run_at_budget(fn, noise, process, sampler, grid, budget):
    """(rmse-ready output, nfe) with the most steps whose NFE <= budget."""
    best = None
    for steps in range(1, budget + 1):
        out, nfe = sample(
            fn,
            noise,
            process=process,
            prediction="velocity",
            sampler=sampler,
            steps=steps,
            time_grid=grid,
            return_nfe=True,
        )
        if nfe > budget:
            break
        best = (out, nfe)
    return best


def table(name, data, exact_fn, noise, grid):
    """The main table: every ODE sampler on every process at NFE 5/10/20/50."""
    print(
        f"\n### {name}: RMSE vs exact PF-ODE end point, grid={grid}, {noise.shape[0]} samples "
        f"[ratio to baseline {BASELINE} at same NFE]\n"
    )
    header = "| process | sampler | " + " | ".join(f"NFE {b}" for b in BUDGETS) + " |"
    print(header)
    print("|" + "---|" * (2 + len(BUDGETS)))
    for process in PROCESSES:
        proc = build_process(process)
        exact = exact_fn(noise, proc)
        fn = analytic_model_fn(data, proc, "velocity")
        base = {}
        rows = []
        for sampler in SAMPLERS:
            cells = []
            for b in BUDGETS:
                out, nfe = run_at_budget(fn, noise, proc, sampler, grid, b)
                err = rmse(out, exact)
                if sampler == BASELINE:
                    base[b] = err
                tag = "" if nfe == b else f" (nfe {nfe})"
                cells.append(f"{err:.2e} [{base[b] / err:.1f}x]{tag}")
            rows.append(f"| {process} | {sampler} | " + " | ".join(cells) + " |")
        print("\n".join(rows))


def v3_table(name, data, exact_fn, noise, closed_form: bool):
    """DPM-Solver-v3 (EMS estimated from data samples) vs DPM-Solver++ 2M/3M, each on its default grid; each cell's
    [ratio] is dpmpp-2m's error over its own, at that budget in this run."""
    print(
        f"\n### {name}: DPM-Solver-v3 vs DPM-Solver++, RMSE vs exact PF-ODE end point, {noise.shape[0]} samples; "
        f"EMS from {EMS_SAMPLES} data samples on {EMS_NODES} lambda nodes (finite differences)\n"
    )
    print("| process | grid | sampler | " + " | ".join(f"NFE {b}" for b in V3_BUDGETS) + " |")
    print("|" + "---|" * (3 + len(V3_BUDGETS)))
    for process in PROCESSES:
        proc = build_process(process)
        exact = exact_fn(noise, proc)
        fn = analytic_model_fn(data, proc, "velocity")
        start = time.time()
        gen = torch.Generator().manual_seed(0)
        lam = ems_lambdas(proc, EMS_NODES)
        batches = [data.sample(EMS_SAMPLES // 2, gen) for _ in range(2)]
        estimated = estimate_ems(
            fn,
            batches,
            process=proc,
            prediction="velocity",
            lambdas=lam,
            method="fd",
            generator=torch.Generator().manual_seed(1),
        )
        ems_time = time.time() - start
        variants = [
            ("dpmpp-2m", {}),
            ("dpmpp-3m", {}),
            ("dpmsolver-v3 (order 2)", {"sampler": "dpmsolver-v3", "ems": estimated, "v3_order": 2}),
            ("dpmsolver-v3 (order 3)", {"sampler": "dpmsolver-v3", "ems": estimated, "v3_order": 3}),
            (
                "dpmsolver-v3 (order 3, no corrector)",
                {"sampler": "dpmsolver-v3", "ems": estimated, "v3_order": 3, "v3_corrector": False},
            ),
        ]
        if closed_form:
            variants.append(
                (
                    "dpmsolver-v3 (closed-form EMS)",
                    {"sampler": "dpmsolver-v3", "ems": gaussian_ems(data, lam), "v3_order": 3},
                )
            )
        grid = default_grid_kind(proc, "dpmsolver-v3")
        base: dict[int, float] = {}  # dpmpp-2m's error at each budget, this run: [dpmpp-2m error / this error]
        for label, kw in variants:
            kw = dict(kw)
            sampler = kw.pop("sampler", label)
            cells = []
            for b in V3_BUDGETS:
                out, nfe = sample(
                    fn, noise, process=proc, prediction="velocity", sampler=sampler, steps=b, return_nfe=True, **kw
                )
                err = rmse(out, exact)
                base.setdefault(b, err)  # the first variant is dpmpp-2m
                cells.append(f"{err:.2e} [{base[b] / err:.1f}x]" + ("" if nfe == b else f" (nfe {nfe})"))
            print(f"| {process} | {grid} | {label} | " + " | ".join(cells) + " |")
        print(f"| {process} | | (EMS estimation {ems_time:.1f} s) | | | |")


def diffusers_table():
    """DPM-Solver++ 2M vs diffusers on a 64-D Gaussian (std log-uniform in [0.1, 2]), vp-linear."""
    try:
        import diffusers
    except ImportError:
        print("\n(diffusers not installed: skipping the diffusers comparison)")
        return
    proc = build_process("vp-linear")
    g = torch.Generator().manual_seed(0)
    std = torch.exp(torch.empty(64, dtype=torch.float64).uniform_(math.log(0.1), math.log(2.0), generator=g))
    data = GaussianData(torch.randn(64, generator=g, dtype=torch.float64), std)
    noise = torch.randn(128, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = data.exact_pf_ode(noise, proc, 1.0)
    fn = analytic_model_fn(data, proc, "eps")

    def run(steps, **config):
        sched = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000,
            beta_start=1e-4,
            beta_end=0.02,
            beta_schedule="linear",
            solver_order=2,
            prediction_type="epsilon",
            algorithm_type="dpmsolver++",
            **config,
        )
        sched.set_timesteps(steps)
        x = noise.clone()
        for tau in sched.timesteps:
            eps = fn(x, torch.full((x.shape[0],), float(tau) / 999, dtype=torch.float64))
            x = sched.step(eps, tau, x).prev_sample.to(torch.float64)
        return x

    print(
        "\n### DPM-Solver++ 2M vs diffusers DPMSolverMultistepScheduler: 64-D Gaussian, vp-linear, 128 samples, "
        "RMSE vs exact PF-ODE end point [diffusers' default linspace error / this error, same run]\n"
    )
    print("| sampler | grid | " + " | ".join(f"NFE {b}" for b in BUDGETS) + " |")
    print("|" + "---|" * (2 + len(BUDGETS)))
    rows = [
        (
            "ditcore dpmpp-2m",
            "default (uniform-lambda)",
            lambda n: sample(fn, noise, process=proc, prediction="eps", sampler="dpmpp-2m", steps=n),
        ),
        (
            "ditcore dpmpp-2m",
            "uniform-t",
            lambda n: sample(
                fn, noise, process=proc, prediction="eps", sampler="dpmpp-2m", steps=n, time_grid="uniform-t"
            ),
        ),
        ("diffusers", "linspace (default)", lambda n: run(n)),
        ("diffusers", "use_lu_lambdas", lambda n: run(n, use_lu_lambdas=True)),
        ("diffusers", "use_karras_sigmas", lambda n: run(n, use_karras_sigmas=True)),
    ]
    errs = {(label, grid): [rmse(fn_run(b), exact) for b in BUDGETS] for label, grid, fn_run in rows}
    base = errs[("diffusers", "linspace (default)")]
    for (label, grid), row in errs.items():
        cells = [f"{e:.2e} [{b / e:.1f}x]" for e, b in zip(row, base)]
        print(f"| {label} | {grid} | " + " | ".join(cells) + " |")


def main() -> None:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--grid",
        default="uniform-lambda",
        help="main table's time grid (default, uniform-t, uniform-lambda, edm, sd3-shift)",
    )
    ap.add_argument("--data", default="both", choices=("gaussian", "mixture", "both"))
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--sections", default="main,v3,diffusers", help="comma-separated: main, v3, diffusers")
    args = ap.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"main", "v3", "diffusers"}
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}")
    torch.set_num_threads(1)
    start = time.time()
    gauss = GaussianData(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([0.3, 1.0, 0.5, 2.0]))
    g_noise = torch.randn(args.samples, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mix = GaussianMixtureData(
        torch.tensor([[1.5, 0.5], [-1.0, -0.5]]), torch.tensor([0.4, 0.6]), torch.tensor([0.3, 0.7])
    )
    m_noise = torch.randn(min(args.samples, 64), 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cases = []
    if args.data in ("gaussian", "both"):
        cases.append(
            ("Gaussian N(mu, diag(s^2)), D=4", gauss, lambda n, p: gauss.exact_pf_ode(n, p, 1.0), g_noise, True)
        )
    if args.data in ("mixture", "both"):
        refs: dict[str, torch.Tensor] = {}

        def mix_exact(n, p):
            if p.name not in refs:
                refs[p.name] = reference_pf_ode(mix, n, p, 1.0)
            return refs[p.name]

        cases.append(("2-component Gaussian mixture, D=2", mix, mix_exact, m_noise, False))
    for name, data, exact_fn, noise, closed_form in cases:
        if "main" in sections:
            table(name, data, exact_fn, noise, args.grid)
        if "v3" in sections:
            v3_table(name, data, exact_fn, noise, closed_form)
    if "diffusers" in sections:
        diffusers_table()
    print(f"\n(bench wall time {time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
