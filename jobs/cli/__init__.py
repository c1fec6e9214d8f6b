"""The `ditscale` command line: one entry point dispatching to the command modules of each package.

Each command is one module with `main(argv) -> int` and its own argparse parser, living with the package it drives:
pipelines/cli (data, precompute, sample, models, flops, export), serve/cli (serve, loadtest) and jobs/cli (train,
sweep, evaluate, fit, report, promote, submit, jobs, quickstart). jobs is the top layer, so only it sees them all.
"""

from __future__ import annotations

import importlib
import os
import sys

# command -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("jobs.cli.quickstart", "run the whole pipeline locally (built-in data or a real data set)"),
    "data": ("pipelines.cli.data", "data sets, VAE / feature-net training, latent data set inspection"),
    "precompute": ("pipelines.cli.precompute", "encode images/captions into a latent data set (Ray Data)"),
    "train": ("jobs.cli.train", "train one model to a FLOPs budget on Ray Train"),
    "sweep": ("jobs.cli.sweep", "run a models x budgets scaling grid on Ray Tune, tracked in MLflow"),
    "evaluate": ("jobs.cli.evaluate", "FID (and attribute accuracy) of a checkpoint"),
    "distill": ("jobs.cli.distill", "guidance-distil a checkpoint: a student with the CFG scale as an input"),
    "ems": ("jobs.cli.ems", "DPM-Solver-v3 model statistics of a checkpoint, stored beside it"),
    "concepts": ("jobs.cli.concepts", "concept directions and PCA of a checkpoint's mid-layer features"),
    "fit": ("jobs.cli.fit", "fit scaling laws to a sweep, with intervals and plots"),
    "mup-report": ("jobs.cli.mup_report", "muP learning-rate transfer: best lr per width with and without muP"),
    "report": ("jobs.cli.report", "print the fitted laws and the point table of a sweep"),
    "promote": ("jobs.cli.promote", "register the best checkpoint as the MLflow 'champion'"),
    "sample": ("pipelines.cli.sample", "sample an image grid from a checkpoint"),
    "serve": ("serve.cli.serve", "serve a checkpoint over HTTP with Ray Serve"),
    "loadtest": ("serve.cli.loadtest", "load-test a running sampler service"),
    "export": ("pipelines.cli.export", "export a checkpoint to diffusers"),
    "models": ("pipelines.cli.models", "table of model presets: parameters and GFLOPs"),
    "flops": ("pipelines.cli.flops", "parameters, MACs and FLOPs of one model as JSON"),
    "submit": ("jobs.cli.submit", "submit precompute/sweep/fit/serve to a Ray cluster"),
    "jobs": ("jobs.cli.jobs", "list, inspect, tail or stop submitted Ray jobs"),
}


def version() -> str:
    """The installed ditscale version (and the git revision of a checkout, when there is one)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        v = pkg_version("ditscale")
    except PackageNotFoundError:
        v = "unknown"
    from pipelines.precompute.job import code_version

    rev = code_version()
    return f"ditscale {v}" + (f" ({rev})" if rev.startswith("git:") else "")


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: ditscale <command> [options]",
        "       ditscale --version",
        "",
        "Diffusion Transformer scaling research on Ray.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "Run `ditscale <command> --help` for the options of a command (config-driven ones: their config keys "
        "with their defaults).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ditscale` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ditscale: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # Run-time defaults (not at import): no usage stats or MLflow telemetry; the user's own values win.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)
