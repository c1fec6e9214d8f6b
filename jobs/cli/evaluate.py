"""`ditscale evaluate`: FID (and attribute accuracy) of a checkpoint against its data set's reference statistics."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Optional, Sequence

from pipelines.cli.parsers import command_error, command_parser, nonneg_float, nonneg_int, positive_int, seed_int


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale evaluate`."""
    p = command_parser("evaluate", "FID (and attribute accuracy) of a checkpoint's EMA weights")
    p.add_argument("checkpoint", help="checkpoint directory (local or s3://), e.g. runs/<run>/checkpoints/step_X")
    p.add_argument("--data", default=None, help="latent data set (default: the checkpoint's data.manifest)")
    p.add_argument("--num-samples", type=positive_int, default=256)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--guidance", type=nonneg_float, default=1.0)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument(
        "--classifier",
        default=None,
        help="class classifier directory (`ditscale data classifier`): adds the class accuracy of the samples",
    )
    p.add_argument(
        "--num-actors",
        type=nonneg_int,
        default=1,
        help="Ray tasks that sample in parallel, each holding one CPU (or a GPU where the cluster has them); 0, or 1 "
        "with no Ray running (the default), samples in this process without Ray",
    )
    from jobs.evaluation.fid import FIDSettings
    from pipelines.cli.config_args import add_print_config

    add_print_config(p, ("settings", FIDSettings))
    return p


def _check_before_sampling(args, local: str, data: str, settings) -> None:  # noqa: ANN001
    """What the sampling tasks or the scoring at the end would fail on, named before Ray starts or any sample is
    drawn: a sampler the checkpoint cannot run, and a --classifier that is not an image classifier of the data
    set's classes."""
    from ditcore.checkpoint import read_checkpoint_config
    from pipelines.generation import sampler_problem
    from pipelines.infra import storage

    problem = sampler_problem(args.checkpoint, read_checkpoint_config(local), settings.sampler, settings.guidance)
    if problem:
        raise ValueError(problem)
    if args.classifier:
        from ditcore.metrics.features import load_feature_net
        from pipelines.latents.manifest import Manifest

        with storage.local_copy_scope(args.classifier) as local:
            net = load_feature_net(local)
        classes = getattr(net, "num_classes", None)
        if classes is None:
            raise ValueError(f"--classifier {args.classifier}: {type(net).__name__} is not an image classifier")
        have = Manifest.read(data).num_classes
        if have and int(classes) < int(have):  # more classes than the data's is fine: a label is scored as given
            raise ValueError(
                f"--classifier {args.classifier}: knows only {classes} classes, the data set {data} has {have}"
            )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale evaluate`."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from ditcore.checkpoint import CheckpointError, read_checkpoint_config, verify_checkpoint_files
    from jobs.evaluation.fid import FIDSettings, evaluate_checkpoint
    from pipelines.infra import storage
    from pipelines.infra.ray_runtime import init_ray

    try:
        # The checkpoint first: a missing one is named before anything about the data set is said.
        with storage.local_copy_scope(args.checkpoint) as local:  # an s3:// download: removed after the checks
            recorded = read_checkpoint_config(local).get("data", {}).get("manifest")
            verify_checkpoint_files(local)  # here, before sampling tasks each find it truncated
            data = args.data or recorded
            if not data:
                raise ValueError("--data is required (the checkpoint records no data.manifest)")
            settings = FIDSettings(
                num_samples=args.num_samples,
                sampler=args.sampler,
                steps=args.steps,
                guidance=args.guidance,
                seed=args.seed,
            )
            settings.check()
            if args.classifier and not storage.exists(storage.join(args.classifier, "config.json")):
                raise FileNotFoundError(f"--classifier {args.classifier}: no classifier there (expected config.json)")
            _check_before_sampling(args, local, data, settings)
        if args.print_config:
            from pipelines.cli.config_args import print_config

            print_config(
                {
                    "checkpoint": args.checkpoint,
                    "data": data,
                    **asdict(settings),
                    "num_actors": args.num_actors,
                    "classifier": args.classifier,
                }
            )
            return 0
        if args.num_actors > 1:
            init_ray()
        out = evaluate_checkpoint(
            args.checkpoint, data, settings, num_actors=args.num_actors, progress=True, classifier=args.classifier
        )
    except (CheckpointError, ValueError, OSError) as e:  # exit 2 for a bad value or path, 1 at run time
        return command_error("evaluate", e)
    print(json.dumps(out, indent=2))
    return 0
