"""Options shared by the commands that read a sweep's MLflow record (`ditscale fit`, `report`, `promote`)."""

from __future__ import annotations

import argparse


def add_sweep_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--experiment | --parent-run, and --tracking-uri."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="MLflow experiment of the sweep (its newest sweep run is used)")
    src.add_argument("--parent-run", dest="parent_run", help="id of the sweep's parent run")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)",
    )
