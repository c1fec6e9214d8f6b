"""`ditscale quickstart`: the whole pipeline locally, one command (see jobs/quickstart/run.py)."""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from pipelines.cli.parsers import command_parser
from pipelines.infra import storage


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale quickstart`."""
    p = command_parser(
        "quickstart",
        "Run the whole pipeline locally on the built-in defaults: data -> VAE -> feature net -> "
        "precompute -> sweep with FID -> scaling-law fit -> champion -> Ray Serve -> report.md + "
        "report.json. Re-running reuses finished stages.",
    )
    p.add_argument("--tiny", action="store_true", help="reduced sizes (about 3 minutes) for tests and a first look")
    p.add_argument(
        "--data",
        default=None,
        help="a real data set instead of the built-in shapes: 'fashion-mnist' (apt package, class-conditional DiT "
        "grid), 'emoji' (npm package, text-conditional MM-DiT grid) or PATH (class-labelled: an image folder "
        "with one sub-folder per class, or parquet with a label column; its train/ split with test/ beside it, "
        "or a `ditscale data fetch` folder). Measured on 2 CPU "
        "cores with the virtualenv in place: emoji 20 minutes, fashion-mnist 18; the report adds the standard "
        "Inception FID of the champion "
        "and the data's floor",
    )
    p.add_argument(
        "--train-encoders",
        action="store_true",
        help="train the built-in data's VAE and FID feature net in this run (about 3.5 minutes on 2 cores) instead "
        "of copying the shipped ones (assets/encoders/builtin); without it they are trained only where this run's "
        "config, data or training code differ from the ones the shipped files were trained with",
    )
    p.add_argument(
        "--ship-encoders",
        action="store_true",
        help="train the built-in VAE and feature net as the full quickstart does, write them and their manifest "
        "(config, data and code fingerprints, sha256 of every file) to assets/encoders/builtin, then exit (about 3 "
        "minutes on 2 cores); `make encoders` runs it",
    )
    p.add_argument(
        "--sweep-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the sweep config (configs/sweep/tiny.yaml, as `ditscale sweep` takes them), after "
        "the mode's own; repeatable. E.g. `--sweep-set base.eval.guidance=3` on a finished quickstart evaluates "
        "the runs it trained with guidance 3 and refits, without training again (evaluation settings: "
        "base.eval.{num_samples,sampler,steps,guidance,seed}); a change of anything that shapes the weights "
        "trains those trials anew. An interrupted sweep resumes either way (finished trials are kept)",
    )
    p.add_argument("--out", default="outputs/quickstart", help="output directory")
    p.add_argument("--force", action="store_true", help="rerun every stage even if its marker matches")
    from pipelines.cli.config_args import add_print_config

    add_print_config(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale quickstart`."""
    from jobs.quickstart.run import run_quickstart

    args = build_parser().parse_args(argv)
    from jobs.quickstart.modes import make_data_mode, make_mode, with_sweep_overrides

    try:
        mode = make_data_mode(args.data, args.tiny) if args.data else make_mode(args.tiny)
        mode = with_sweep_overrides(mode, args.sweep_set)
    except ValueError as e:  # an unknown --data name or a missing folder: nothing has been written
        build_parser().error(str(e))
    if args.print_config:
        from dataclasses import asdict

        from pipelines.cli.config_args import print_config

        print_config(
            {"out": args.out, "force": args.force, "train_encoders": args.train_encoders, "mode": asdict(mode)}
        )
        return 0
    if args.ship_encoders:
        if args.data or args.tiny:
            build_parser().error(
                "--ship-encoders: only the full quickstart's built-in encoders are shipped (drop "
                + ("--data" if args.data else "--tiny")
                + ")"
            )
        from jobs.quickstart.stages.encoders import ship_encoders

        ship_encoders(tiny=args.tiny)
        return 0
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        build_parser().error(f"--out {args.out!r} is a file, not a directory")
    try:
        storage.refuse_remote(args.out, "--out", "the quickstart's outputs, MLflow store and report")
    except ValueError as e:
        build_parser().error(str(e))
    return run_quickstart(
        args.out,
        tiny=args.tiny,
        force=args.force,
        data=args.data,
        train_encoders=args.train_encoders,
        sweep_set=args.sweep_set,
    )
