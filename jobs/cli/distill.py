"""`ditscale distill`: train a guidance-embedded student from a teacher checkpoint on Ray Train (one forward/step)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from jobs.cli.planned_run import add_planned_run_arguments, run_planned
from jobs.distill.config import DistillConfig
from pipelines.cli.config_args import run_config_command
from pipelines.cli.parsers import command_parser


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale distill`."""
    p = command_parser(
        "distill",
        "Guidance distillation: a student that takes the CFG scale w as an input learns the teacher's "
        "guided prediction u + w (c - u) (w ~ U[w_min, w_max]); trained on Ray Train like `train`, tracked in MLflow "
        "under the teacher's run. Sample the student with one model call per step (guidance is an input).",
    )
    p.add_argument("teacher", help="teacher checkpoint directory (local or s3://): runs/<run>/checkpoints/step_X")
    add_planned_run_arguments(
        p,
        DistillConfig,
        "ditscale distill runs/r/checkpoints/step_00001000 steps=300 w_min=1 w_max=6 lr=1e-4",
        "check the teacher, data set and MLflow, then exit",
    )
    return p


def _run(cfg: DistillConfig, validate_only: bool) -> int:
    from jobs.distill.driver import distill_plan, run_distill

    plan = distill_plan(cfg)
    summary = (
        f"distill {plan.run_name}: student {plan.model_name} ({plan.params:,} params) from {cfg.teacher}, "
        f"w ~ U[{cfg.w_min:g}, {cfg.w_max:g}], {plan.total_steps} steps of {cfg.batch_size}"
    )
    return run_planned(summary, validate_only, lambda: run_distill(cfg, plan=plan))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale distill`."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    # The positional is the teacher: a teacher= override that names another one silently won (it came later).
    others = [
        o.split("=", 1)[1] for o in args.overrides if o.startswith("teacher=") and o.split("=", 1)[1] != args.teacher
    ]
    if others:
        parser.error(f"teacher={others[0]!r} contradicts the teacher argument {args.teacher!r}: give it once")
    args.overrides = [f"teacher={args.teacher}", *args.overrides]
    return run_config_command("ditscale distill", DistillConfig, args, lambda cfg: _run(cfg, args.validate_only))
