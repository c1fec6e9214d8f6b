"""Options shared by the commands that read a sweep's MLflow record (`ditscale fit`, `report`, `promote`)."""

from __future__ import annotations

import argparse

from pipelines.cli.parsers import command_parser


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


def sweep_command_parser(command: str, description: str, metric_help: str) -> argparse.ArgumentParser:
    """The parser of a command that reads a sweep's record: the sweep source options and --metric (default fid)."""
    p = command_parser(command, description)
    add_sweep_source_arguments(p)
    p.add_argument("--metric", default="fid", help=metric_help)
    return p
