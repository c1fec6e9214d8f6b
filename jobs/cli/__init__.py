"""`ditscale` command line: one entry point that dispatches to each component's own command module."""
from __future__ import annotations

import importlib
import os
import sys

# command -> (module, one-line help). Each module exposes `main(argv) -> int` with its own argparse parser.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("pipelines.cli.models", "table of model presets: parameters and GFLOPs"),
    "flops": ("pipelines.cli.models", "parameters, MACs and FLOPs of one model as JSON"),
    "sample": ("pipelines.cli.sample", "sample an image grid from a checkpoint"),
    "precompute": ("pipelines.precompute.job", "encode images/captions into a latent dataset (Ray Data)"),
    "data": ("pipelines.cli.data", "built-in data set, VAE / feature-net training, dataset inspection"),
    "train": ("jobs.train.driver", "train one model to a FLOPs budget on Ray Train"),
    "sweep": ("jobs.sweep.driver", "run a models x budgets scaling grid on Ray Tune, tracked in MLflow"),
    "evaluate": ("jobs.evaluation.fid", "FID (and attribute accuracy) of a checkpoint"),
    "fit": ("jobs.scaling.fit", "fit scaling laws to a sweep, with intervals and plots"),
    "promote": ("jobs.scaling.promote", "register the best checkpoint as the MLflow 'champion'"),
    "report": ("jobs.scaling.report", "print the fitted laws and the trial table of a sweep"),
    "serve": ("serve.cli.main", "serve a checkpoint over HTTP with Ray Serve"),
    "loadtest": ("serve.cli.main", "load-test a running sampler service"),
    "submit": ("jobs.cluster.submit", "submit precompute/sweep/fit/serve to a Ray cluster"),
    "jobs": ("jobs.cluster.submit", "list, inspect, tail or stop submitted Ray jobs"),
    "quickstart": ("jobs.quickstart.main", "run the whole pipeline locally on the built-in defaults"),
}

# Commands whose module takes its own name as the first argument (modules serving several commands).
_PASS_NAME = {"models", "flops", "serve", "loadtest", "submit", "jobs"}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: ditscale <command> [options]", "", "Diffusion Transformer scaling research on Ray.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `ditscale <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ditscale` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ditscale: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    module = importlib.import_module(COMMANDS[name][0])
    rc = module.main([name, *rest] if name in _PASS_NAME else rest)
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
