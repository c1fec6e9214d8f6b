"""Tiny runs of the paper-recipe configs (docs/recipes.md) and baselines on the built-in latent set + FID.

python bench/recipes_tiny.py 600 [LATENTS] [--only edm]  # steps per run; LATENTS: the built-in latent set (default
#   outputs/latents/builtin: what `ditscale precompute --config configs/precompute/builtin.yaml` writes); --only: the
#   option/baseline pairs whose option name starts with one of the given words

Each option is trained beside a baseline that changes only that option, in the same run; the last lines give
each option's FID minus its baseline's, in standard errors of that difference.
"""

import argparse
import json
import math
import tempfile
import time

import torch

from jobs.evaluation.fid import evaluate_checkpoint
from jobs.train.config import TrainConfig
from jobs.train.driver import run_local
from jobs.train.plan import resolve_run
from pipelines.infra.config_files import load_config

COMMON = [
    "mlflow.enabled=false",
    "eval.num_samples=0",
    "checkpoint.every_n_steps=100000",
    "data.val_samples=256",
    "optim.warmup_steps=10",
    "run.seed=0",
]
RUNS = [
    ("dit-learned-sigma", "configs/train/dit-learned-sigma.yaml", [], [("ddpm-learned", 100)]),
    (
        "dit fixed sigma (baseline)",
        "configs/train/dit-learned-sigma.yaml",
        ["objective.learn_sigma=false", "model.overrides={}"],
        [("ddpm", 100)],
    ),
    ("sit-linear velocity", "configs/train/sit-sde.yaml", [], [("sde", 100), ("euler", 100), ("heun", 50)]),
    ("edm", "configs/train/edm.yaml", [], [("heun", 18)]),
    (
        "edm-ve x0 no precond (baseline)",
        "configs/train/edm.yaml",
        ["objective.preconditioning=none", "objective.t_sampler=uniform"],
        [("heun", 18)],
    ),
]
# (option, its baseline): the first sampler of each
PAIRS = [("dit-learned-sigma", "dit fixed sigma (baseline)"), ("edm", "edm-ve x0 no precond (baseline)")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("steps", type=int, nargs="?", default=600, help="training steps per run")
    p.add_argument("latents", nargs="?", default="outputs/latents/builtin", help="the built-in latent set")
    p.add_argument(
        "--only", default="", help="comma-separated option names (dit-learned-sigma, edm): run these pairs only"
    )
    args = p.parse_args()
    pairs = PAIRS
    if args.only:
        words = [w.strip() for w in args.only.split(",") if w.strip()]
        pairs = [pr for pr in PAIRS if any(pr[0].startswith(w) for w in words)]
        if not pairs:
            p.error(f"--only {args.only!r} names no option; options: {', '.join(o for o, _ in PAIRS)}")
    wanted = {n for pr in pairs for n in pr} if args.only else {r[0] for r in RUNS}
    torch.set_num_threads(1)
    first: dict[str, tuple[float, float]] = {}
    for name, path, ov, samplers in RUNS:
        if name not in wanted:
            continue
        common = [f"data.manifest={args.latents}", *COMMON, *ov]
        cfg = load_config(TrainConfig, path, common)
        fpi = resolve_run(cfg, check_mlflow=False).flops["train_flops_per_image"]
        cfg = load_config(TrainConfig, path, [*common, f"budget_flops={fpi * cfg.data.batch_size * args.steps}"])
        t0 = time.time()
        out = run_local(cfg, tempfile.mkdtemp())
        res = {
            "run": name,
            "steps": out["steps"],
            "val_loss": round(out["val_loss"], 4),
            "train_s": round(time.time() - t0, 1),
        }
        for sampler, steps in samplers:
            t1 = time.time()
            r = evaluate_checkpoint(
                out["last_checkpoint"],
                args.latents,
                num_samples=256,
                sampler=sampler,
                steps=steps,
                num_actors=0,
                n_boot=20,
            )
            se = r.get("fid_se") or float("nan")
            first.setdefault(name, (r["fid"], se))
            res[f"fid[{sampler},{steps}]"] = f"{r['fid']:.2f} +- {se:.2f} ({time.time() - t1:.0f}s)"
        print(json.dumps(res), flush=True)
    for option, base in pairs:
        (f1, s1), (f0, s0) = first[option], first[base]
        d = f1 - f0
        print(f"{option} - {base}: FID {d:+.2f} ({d / math.hypot(s1, s0):+.1f} standard errors)", flush=True)


if __name__ == "__main__":
    main()
