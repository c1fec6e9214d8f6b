"""Benchmark: `frechet_distance` (eigenvalue trace) vs the scipy-sqrtm formulation (pytorch-fid / ADM) on 2048-d.

Baseline, measured in the same run: `frechet_distance_sqrtm`, the pytorch-fid `calculate_frechet_distance`
formula (scipy.linalg.sqrtm of sigma1 @ sigma2). Prints per case the time of each, the speed ratio and the
absolute difference of the two distances.

    python bench/fid.py [--dim 2048] [--n 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ditcore.metrics.fid import feature_stats, frechet_distance, frechet_distance_sqrtm  # noqa: E402


def _features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Correlated, non-negative (post-ReLU/pool-like) features [n, d]."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.abs(rng.standard_normal((n, d)) @ mix + 0.5 * rng.standard_normal(d))


def _best_time(fn, repeats: int) -> tuple[float, float]:
    """(min wall seconds over repeats, result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per case."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--n", type=int, default=10000, help="samples per set for the full-rank case")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats of each method (the min is reported)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    d = args.dim
    cases = {
        f"full rank (N={args.n})": args.n,
        f"rank-deficient (N={d // 2} < d)": d // 2,
    }
    print(f"dim={d}  threads: OMP={os.environ.get('OMP_NUM_THREADS', 'default')}  cpus={os.cpu_count()}")
    print(f"{'case':32s} {'sqrtm (s)':>10s} {'ours (s)':>9s} {'speed-up':>9s} {'|diff|':>10s} {'FID':>12s}")
    for name, n in cases.items():
        mu1, s1 = feature_stats(_features(rng, n, d))
        mu2, s2 = feature_stats(_features(rng, n, d))
        t_ref, ref = _best_time(lambda: frechet_distance_sqrtm(mu1, s1, mu2, s2), args.repeats)
        t_ours, ours = _best_time(lambda: frechet_distance(mu1, s1, mu2, s2), args.repeats)
        print(f"{name:32s} {t_ref:10.2f} {t_ours:9.2f} {t_ref / t_ours:8.1f}x {abs(ours - ref):10.2e} {ref:12.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
