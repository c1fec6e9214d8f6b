"""Tiny runs of the paper-recipe configs (docs/recipes.md) and baselines on the built-in latent set + FID.

python bench/recipes_tiny.py 600 [LATENTS]  # steps per run; LATENTS: the built-in latent set (default
#   outputs/latents/builtin: what `ditscale precompute --config configs/precompute/builtin.yaml` writes)
"""

import json
import sys
import tempfile
import time

import torch

from jobs.evaluation.fid import evaluate_checkpoint
from jobs.train.config import TrainConfig
from jobs.train.driver import run_local
from jobs.train.plan import resolve_run
from pipelines.infra.config_files import load_config

torch.set_num_threads(1)
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 600
M = sys.argv[2] if len(sys.argv) > 2 else "outputs/latents/builtin"
common = [
    f"data.manifest={M}",
    "mlflow.enabled=false",
    "eval.num_samples=0",
    "checkpoint.every_n_steps=100000",
    "data.val_samples=256",
    "optim.warmup_steps=10",
    "run.seed=0",
]
runs = [
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
for name, path, ov, samplers in runs:
    cfg = load_config(TrainConfig, path, common + ov)
    fpi = resolve_run(cfg, check_mlflow=False).flops["train_flops_per_image"]
    cfg = load_config(TrainConfig, path, common + ov + [f"budget_flops={fpi * cfg.data.batch_size * STEPS}"])
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
            out["last_checkpoint"], M, num_samples=256, sampler=sampler, steps=steps, num_actors=0, n_boot=20
        )
        res[f"fid[{sampler},{steps}]"] = (
            f"{r['fid']:.2f} +- {r.get('fid_se', float('nan')):.2f} ({time.time() - t1:.0f}s)"
        )
    print(json.dumps(res), flush=True)
