"""`ditscale promote`: register a sweep's best checkpoint as an MLflow model version, alias 'champion'."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from jobs.cli.common import add_sweep_source_arguments
from pipelines.infra.tracking import CHAMPION_ALIAS, DEFAULT_MODEL_NAME


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale promote`."""
    p = argparse.ArgumentParser(
        prog="ditscale promote",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Register the best checkpoint of a sweep (lowest metric; ties: less "
        "compute, then fewer parameters) and point an alias at it.",
    )
    add_sweep_source_arguments(p)
    p.add_argument("--metric", default="fid", help="point metric to minimise")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model name")
    p.add_argument("--alias", default=CHAMPION_ALIAS, help="alias to point at the new version")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale promote`."""
    args = build_parser().parse_args(argv)
    from jobs.scaling.points import read_points
    from jobs.scaling.promote import PromoteError, promote
    from pipelines.infra.tracking import ExperimentRecordError, TrackingURIError, client

    try:
        mlflow_client = client(args.tracking_uri)
        parent, points = read_points(mlflow_client, experiment=args.experiment, parent_run_id=args.parent_run)
        exp_name = args.experiment or mlflow_client.get_experiment(parent.info.experiment_id).name
        res = promote(
            mlflow_client,
            points,
            model_name=args.model_name,
            metric=args.metric,
            alias=args.alias,
            extra_tags={"experiment": exp_name, "parent_run_id": parent.info.run_id},
        )
    except (PromoteError, ExperimentRecordError, TrackingURIError) as e:
        print(f"ditscale promote: error: {e}", file=sys.stderr)
        return 2
    verb = "registered" if res["created"] else "reused"
    print(
        f"{verb} {res['model_name']} version {res['version']} -> alias '{res['alias']}': model {res['model']}, "
        f"{args.metric}={res[args.metric]}, train FLOPs {res['train_flops']}, checkpoint {res['checkpoint']}"
    )
    return 0
