"""`ditscale train`: train one model to a FLOPs budget on Ray Train, FID at its budget points."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ditcore.config import ConfigError
from jobs.cli.planned_run import add_planned_run_arguments, run_planned
from jobs.train.config import TrainConfig
from pipelines.cli.config_args import run_config_command
from pipelines.cli.parsers import command_parser


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale train`."""
    p = command_parser(
        "train",
        "Train one model to a FLOPs budget on Ray Train "
        "(DDP or FSDP2, fault-tolerant), tracked in MLflow; FID at every budget point.",
    )
    add_planned_run_arguments(
        p,
        TrainConfig,
        "ditscale train --config configs/train/tiny.yaml budget_flops=2e12 run.num_workers=2",
        "check the config against data/MLflow and exit",
    )
    return p


def _run(cfg: TrainConfig, validate_only: bool) -> int:
    from jobs.train.driver import run_training
    from jobs.train.plan import resolve_run

    plan = resolve_run(cfg)
    init = cfg.checkpoint.init_from
    if init:  # the user's own path (a sweep's WSD branches start from checkpoints their main run writes later)
        from ditcore.config import ConfigError
        from pipelines.infra import storage

        if not storage.exists(storage.join(init, "checkpoint.json")):
            raise ConfigError(f"checkpoint.init_from: {init!r} is not a checkpoint (no checkpoint.json there)")
    summary = (
        f"run {plan.run_name}: {plan.model_name} ({plan.params:,} params, "
        f"{plan.train_flops_per_image:.3g} train FLOPs/image), {plan.total_steps} steps to "
        f"{cfg.budget_flops:.3g} FLOPs"
    )
    return run_planned(summary, validate_only, lambda: run_training(cfg, plan=plan))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale train`."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_config_command("ditscale train", TrainConfig, args, lambda cfg: _run(cfg, args.validate_only))


__all__ = ["ConfigError", "build_parser", "main"]
