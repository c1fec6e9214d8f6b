"""`ditscale sweep`: a models x budgets (x hyper-parameters) scaling grid on Ray Tune, tracked in MLflow."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from jobs.sweep.config import SweepConfig
from pipelines.cli.config_args import add_config_arguments, run_config_command
from pipelines.cli.parsers import command_parser


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale sweep`."""
    p = command_parser(
        "sweep",
        "models x budgets scaling grid on Ray Tune, "
        "tracked in MLflow (rerun the same command to finish an interrupted sweep or rerun "
        "its failed trials)",
    )
    add_config_arguments(p, SweepConfig, "ditscale sweep --config configs/sweep/tiny.yaml mode=wsd")
    p.add_argument("--validate-only", action="store_true", help="expand + validate the grid and exit")
    return p


def _run(cfg: SweepConfig, validate_only: bool) -> int:
    from jobs.sweep.driver import format_table, run_sweep
    from jobs.sweep.grid import expand_grid, plan_trials

    if validate_only:
        print(f"{len(plan_trials(expand_grid(cfg), cfg.mode))} trials OK")
        return 0
    out = run_sweep(cfg)
    print(format_table(out))
    state = "complete" if out["complete"] else f"INCOMPLETE (not finished: {', '.join(out['failed'])})"
    print(
        f"[ditscale] sweep {state} in {out['wall_s']:.1f} s; MLflow experiment {out['experiment']!r}, "
        f"parent run {out['parent_run_id']}; dir {out['sweep_dir']}"
    )
    if not out["complete"]:
        # After Ctrl-C, Tune prints "Resume experiment with: Tuner.restore(...)"; the sweep resumes its own way.
        print(
            "[ditscale] to finish it, rerun the same command: finished trials are kept, failed and unfinished ones "
            "run again from their last checkpoints"
        )
    return 0 if out["complete"] else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale sweep`."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from jobs.sweep.driver import load_sweep_config

    # load_sweep_config: an override hparams.optim.lr=[...] means the dotted TrainConfig key, as documented
    return run_config_command(
        "ditscale sweep",
        SweepConfig,
        args,
        lambda cfg: _run(cfg, args.validate_only),
        load=lambda a: load_sweep_config(a.config, a.overrides),
    )
