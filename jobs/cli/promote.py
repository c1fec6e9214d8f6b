"""`ditscale promote`: register a sweep's best checkpoint as an MLflow model version, alias 'champion'."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from jobs.cli.common import sweep_command_parser
from pipelines.cli.parsers import options_for
from pipelines.infra.tracking import CHAMPION_ALIAS, DEFAULT_MODEL_NAME


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale promote`."""
    p = sweep_command_parser(
        "promote",
        "Register the best checkpoint of a sweep (lowest metric; ties: less "
        "compute, then fewer parameters) and point an alias at it.",
        "point metric to minimise",
    )
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model name")
    p.add_argument("--alias", default=CHAMPION_ALIAS, help="alias to point at the new version")
    p.add_argument(
        "--no-pyfunc",
        action="store_true",
        help="register the bare checkpoint directory instead of an MLflow pyfunc model (and log no sample grid)",
    )
    p.add_argument("--no-sample-grid", action="store_true", help="do not log a grid of the champion's samples")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale promote`."""
    args = build_parser().parse_args(argv)
    from jobs.scaling.points import read_points
    from jobs.scaling.promote import PromoteError, promote
    from pipelines.infra.tracking import ExperimentRecordError, TrackingURIError, check_registry_names, client

    try:
        check_registry_names(args.model_name, args.alias)
    except ValueError as e:
        print(f"ditscale promote: error: {e}", file=sys.stderr)
        return 2
    try:
        mlflow_client = client(args.tracking_uri, must_exist=True)
        parent, points = read_points(mlflow_client, experiment=args.experiment, parent_run_id=args.parent_run)
        exp_name = args.experiment or mlflow_client.get_experiment(parent.info.experiment_id).name
        res = promote(
            mlflow_client,
            points,
            **options_for(
                promote,
                args,
                extra_tags={"experiment": exp_name, "parent_run_id": parent.info.run_id},
                pyfunc=not args.no_pyfunc,
                sample_grid=not args.no_sample_grid,
            ),
        )
    except (PromoteError, ExperimentRecordError, TrackingURIError) as e:
        print(f"ditscale promote: error: {e}", file=sys.stderr)
        return 2
    verb = "registered" if res["created"] else "reused"
    print(
        f"{verb} {res['model_name']} version {res['version']} -> alias '{res['alias']}': model {res['model']}, "
        f"{args.metric}={res[args.metric]}, train FLOPs {res['train_flops']}, checkpoint {res['checkpoint']}"
    )
    was = res.get("replaced")
    if was:  # the alias is shared (serve --champion follows it): say which version it no longer names
        print(
            f"alias '{res['alias']}' moved from version {was['version']} ({args.metric}={was.get(args.metric, '?')}"
            f", experiment {was.get('experiment', '?')}, FID network {was.get('fid_network', '?')}, checkpoint "
            f"{was.get('checkpoint', '?')})"
        )
    if res["pyfunc"]:
        print(f"pyfunc model: mlflow.pyfunc.load_model({res['model_uri']!r})")
    if res["sample_grid"]:
        print(f"sample grid: run {res['run_id']} artifact {res['sample_grid']}")
    if res.get("sample_grid_error"):
        print(f"ditscale promote: warning: no sample grid logged: {res['sample_grid_error']}", file=sys.stderr)
    return 0
