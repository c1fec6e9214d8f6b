"""Quickstart modes: the sizes of every stage for the full run (`make quickstart`) and `--tiny` (the README test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Prompts the served champion draws over HTTP and the per-model sample grids use (the built-in grammar).
PROMPTS = [
    "a large red circle",
    "a small blue square at the top left",
    "a green triangle at the bottom right",
    "a large yellow square and a small red circle",
]
GUIDANCE = 2.0  # classifier-free guidance of the served requests and the grids


@dataclass
class Mode:
    """Sizes of every stage for one quickstart mode."""

    name: str
    image_size: int
    vae: dict[str, Any]  # overrides of TrainVAEConfig
    features: dict[str, Any]  # overrides of TrainFeaturesConfig
    precompute: list[str]  # k=v overrides of configs/precompute/builtin.yaml
    sweep: list[str]  # k=v overrides of configs/sweep/tiny.yaml
    serve_steps: int
    grid_images: int  # images per model in the report's sample grids
    n_boot: int = 200  # bootstrap resamples of the fits
    notes: dict[str, Any] = field(default_factory=dict)


def make_mode(tiny: bool) -> Mode:
    """The settings of the tiny or the full quickstart."""
    if tiny:
        # A smoke run of every stage: numbers are noisy, the plumbing is the same as the full run.
        return Mode(
            name="tiny",
            image_size=32,
            vae={
                "steps": 60,
                "batch_size": 16,
                "block_out_channels": [16, 16, 32],
                "scale_images": 128,
                "eval_images": 64,
            },
            features={"steps": 100, "batch_size": 32, "eval_images": 200},
            precompute=["source.count=256", "source.shard_size=128", "compute.batch_size=64"],
            # Batch 16 so that one step of the largest model (3.6e8 FLOPs/image) fits the smallest budget.
            sweep=[
                "budgets=[2e10,5e10,1.2e11]",
                "base.data.batch_size=16",
                "base.eval.num_samples=64",
                "base.eval.steps=8",
                "base.data.val_samples=32",
                "base.optim.warmup_steps=5",
            ],
            serve_steps=8,
            grid_images=4,
            n_boot=50,
        )
    return Mode(
        name="full",
        image_size=32,
        vae={"steps": 600, "scale_images": 256, "eval_images": 128},
        features={"steps": 600, "eval_images": 500},
        precompute=["source.count=2048"],
        sweep=[],
        serve_steps=20,
        grid_images=8,
        n_boot=200,
    )
