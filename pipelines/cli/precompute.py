"""`ditscale precompute`: encode a source into a latent data set (VAE latents, text embeddings, FID statistics)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from pipelines.cli.config_args import add_config_arguments, run_config_command
from pipelines.cli.parsers import command_parser
from pipelines.precompute.job import PrecomputeConfig


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale precompute`."""
    p = command_parser(
        "precompute",
        "Encode a source (built-in shapes, image folder, parquet, WebDataset; local or "
        "s3://) into a latent "
        "data set: VAE posterior mean/std (+ flip), text embeddings, FID reference statistics, on Ray Data. "
        "Resumes an interrupted run in the same output.",
    )
    add_config_arguments(
        p,
        PrecomputeConfig,
        "ditscale precompute --config configs/precompute/builtin.yaml "
        "output=/tmp/lat source.count=256 compute.actors=2",
    )
    return p


def _run(cfg: PrecomputeConfig) -> int:
    from pipelines.precompute.job import format_summary, run_precompute, summary_warnings

    try:
        summary = run_precompute(cfg)
    except FileNotFoundError as exc:
        print(f"ditscale precompute: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary), flush=True)
    for warning in summary_warnings(summary):
        print(f"ditscale precompute: warning: {warning}", file=sys.stderr, flush=True)
    if summary["input"] and not summary["written"]:
        print(
            f"ditscale precompute: error: every one of the {summary['input']} inputs failed; each one's source and "
            f"reason are in {summary['output']}/failures.parquet",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale precompute` (and `python -m pipelines.precompute`)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_config_command("ditscale precompute", PrecomputeConfig, args, _run)
