"""Sampler accuracy vs model evaluations (NFE): RMSE of the end point against the exact PF-ODE solution.

Data with a closed-form denoiser stand in for a perfect network: a 4-D Gaussian (exact end point in closed
form) and a 2-component 2-D Gaussian mixture (reference by adaptive DOP853 integration, rtol 1e-10).
For each process and sampler the table gives RMSE at NFE budgets 5, 10, 20, 50 (the largest step count
whose NFE fits the budget; Heun and 2S spend two evaluations per step) and, in brackets, the ratio to the
named baseline DDIM (eta = 0) at the same budget (> 1 = more accurate). DDPM is stochastic and has no
single ODE end point, so it is not listed. Compare with DPM-Solver++'s claim that 15-20 steps nearly
converge.

    .venv/bin/python bench/samplers.py [--grid uniform-lambda] [--data both] [--samples 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from ditcore.processes import build_process
from ditcore.samplers import sample
from ditcore.samplers.analytic import GaussianData, GaussianMixtureData, analytic_model_fn, reference_pf_ode

SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m", "dpmpp-3m", "dpmpp-2s")
PROCESSES = ("vp-linear", "vp-cosine", "flow", "sit-gvp")
BUDGETS = (5, 10, 20, 50)
BASELINE = "ddim"


def run_at_budget(fn, noise, process, sampler, grid, budget):
    """(rmse-ready output, nfe) with the most steps whose NFE <= budget."""
    best = None
    for steps in range(1, budget + 1):
        out, nfe = sample(fn, noise, process=process, prediction="velocity", sampler=sampler, steps=steps,
                          time_grid=grid, return_nfe=True)
        if nfe > budget:
            break
        best = (out, nfe)
    return best


def table(name, data, exact_fn, noise, grid):
    print(f"\n### {name}: RMSE vs exact PF-ODE end point, grid={grid}, {noise.shape[0]} samples "
          f"[ratio to baseline {BASELINE} at same NFE]\n")
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
                err = (out - exact).pow(2).mean().sqrt().item()
                if sampler == BASELINE:
                    base[b] = err
                tag = "" if nfe == b else f" (nfe {nfe})"
                cells.append(f"{err:.2e} [{base[b] / err:.1f}x]{tag}")
            rows.append(f"| {process} | {sampler} | " + " | ".join(cells) + " |")
        print("\n".join(rows))


def main() -> None:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="uniform-lambda", help="time grid (uniform-t, uniform-lambda, edm, sd3-shift)")
    ap.add_argument("--data", default="both", choices=("gaussian", "mixture", "both"))
    ap.add_argument("--samples", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    if args.data in ("gaussian", "both"):
        gauss = GaussianData(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([0.3, 1.0, 0.5, 2.0]))
        noise = torch.randn(args.samples, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        table("Gaussian N(mu, diag(s^2)), D=4", gauss, lambda n, p: gauss.exact_pf_ode(n, p, 1.0), noise, args.grid)
    if args.data in ("mixture", "both"):
        mix = GaussianMixtureData(torch.tensor([[1.5, 0.5], [-1.0, -0.5]]), torch.tensor([0.4, 0.6]),
                                  torch.tensor([0.3, 0.7]))
        noise = torch.randn(min(args.samples, 64), 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        table("2-component Gaussian mixture, D=2", mix, lambda n, p: reference_pf_ode(mix, n, p, 1.0), noise, args.grid)
    print(f"\n(bench wall time {time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
