"""What the Ray Train commands (`ditscale train`, `distill`) share: `--validate-only` beside the config options, and
the plan line, then the run and its result as JSON."""

from __future__ import annotations

import argparse
import json
from typing import Callable

from pipelines.cli.config_args import add_config_arguments


def add_planned_run_arguments(parser: argparse.ArgumentParser, cls: type, example: str, validate_help: str) -> None:
    """The config options of `cls` (see `add_config_arguments`) and --validate-only."""
    add_config_arguments(parser, cls, example)
    parser.add_argument("--validate-only", action="store_true", help=validate_help)


def run_planned(summary: str, validate_only: bool, run: Callable[[], dict]) -> int:
    """Print the plan's one-line summary; unless `validate_only`, run and print the result (less its metrics).

    0 when the run finished (or only validated), else 1.
    """
    print(f"[ditscale] {summary}", flush=True)
    if validate_only:
        return 0
    out = run()
    print(json.dumps({k: v for k, v in out.items() if k != "metrics"}, indent=2, default=str))
    return 0 if out["status"] == "finished" else 1
