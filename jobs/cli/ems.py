"""`ditscale ems CKPT`: DPM-Solver-v3's empirical model statistics of a checkpoint, stored beside it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from pipelines.cli.parsers import (
    checkpoint_command_parser,
    command_error,
    nonneg_float,
    nonneg_int,
    options_for,
    positive_int,
)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale ems`."""
    from jobs.ems.compute import EMSSettings

    d = EMSSettings()
    p = checkpoint_command_parser(
        "ems",
        "Estimate DPM-Solver-v3's empirical model statistics (EMS) of a checkpoint's EMA weights on its "
        "latent data set (lambda nodes split over Ray tasks) and store them beside it (ems[_w<w>].safetensors); "
        "`--sampler dpmsolver-v3` of sample / serve / evaluate then loads them.",
    )
    p.add_argument(
        "--guidance", type=nonneg_float, default=d.guidance, help="CFG scale the EMS are for (they depend on it)"
    )
    p.add_argument("--num-samples", type=positive_int, default=d.num_samples)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--num-nodes", type=positive_int, default=d.num_nodes, help="uniform lambda nodes")
    p.add_argument("--method", choices=("jvp", "fd"), default=d.method)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-tasks", type=nonneg_int, default=d.num_tasks, help="Ray tasks (0: in this process, no Ray)")
    p.add_argument(
        "--shared-filesystem",
        action="store_true",
        help="the checkpoint and its data set are on a filesystem mounted at the same path on every node (a local "
        "path is refused on a multi-node or autoscaling cluster without it; s3:// always works)",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale ems`."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from jobs.ems.compute import EMSSettings, compute_ems
    from pipelines.checkpoint_extras import save_ems
    from pipelines.generation import GenerationError

    settings = EMSSettings(**options_for(EMSSettings, args))
    try:
        settings.check()
        ems, info = compute_ems(args.checkpoint, settings, shared_filesystem=args.shared_filesystem)
        uri = save_ems(args.checkpoint, ems, args.guidance, info)
    except (GenerationError, ValueError, OSError) as e:  # exit 2 for a bad value or path, 1 at run time
        return command_error("ems", e)
    print(json.dumps({"ems": uri, "nodes": int(ems.lambdas.numel()), "shape": list(ems.shape), **info}, indent=2))
    return 0
