"""`ditscale mup-report`: muP learning-rate transfer of a learning-rate x width sweep (jobs/scaling/mup.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from pipelines.cli.parsers import DefaultsHelpFormatter
from pipelines.infra import storage


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale mup-report`."""
    p = argparse.ArgumentParser(
        prog="ditscale mup-report",
        formatter_class=DefaultsHelpFormatter,
        description="Best learning rate per width with and without muP from a learning-rate x width sweep "
        "(configs/sweep/mup-transfer.yaml): loss-vs-lr plot per setting and mup_report.json.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="MLflow experiment: the points of EVERY sweep run in it (one per width)")
    src.add_argument("--parent-run", dest="parent_runs", action="append", help="a sweep's parent run id (repeatable)")
    src.add_argument(
        "--points",
        help="a JSON file holding a list of points (no MLflow); a FAILED run is an entry with its model, hparams and "
        "a `failed` reason (one that says 'diverged' or 'non-finite loss' counts as worse than any finite loss)",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--out", default=None, help="output directory (default: fit_reports/mup-<experiment or run>)")
    return p


def _sweep_runs(client, experiment: str) -> list[str]:
    from pipelines.infra.tracking import ROLE_SWEEP, ROLE_TAG, ExperimentRecordError, get_experiment_id

    exp_id = get_experiment_id(client, experiment)
    runs = client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}'", max_results=1000)
    if not runs:
        raise ExperimentRecordError(f"experiment {experiment!r} has no sweep run (tag {ROLE_TAG}={ROLE_SWEEP})")
    return [r.info.run_id for r in runs]


def _points(args: argparse.Namespace) -> list[dict]:
    if args.points:
        path = Path(args.points)
        if not path.is_file():
            raise FileNotFoundError(f"--points {args.points!r}: no such file")
        try:
            points = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"--points {args.points!r}: not JSON ({e})") from e
        if not isinstance(points, list):
            raise ValueError(f"--points {args.points!r}: expected a JSON list of points, got {type(points).__name__}")
        return points
    from jobs.scaling.points import read_points, to_dicts
    from pipelines.infra import tracking

    client = tracking.client(args.tracking_uri, must_exist=True)
    out: list[dict] = []
    for run_id in args.parent_runs or _sweep_runs(client, args.experiment):
        out += to_dicts(read_points(client, parent_run_id=run_id)[1])
        out += tracking.failed_trials(client, run_id)  # FAILED trials have no points: their lrs and reasons
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale mup-report`."""
    args = build_parser().parse_args(argv)
    from ditcore.scaling import FitError
    from jobs.scaling.mup import write_mup_report
    from pipelines.infra.tracking import ExperimentRecordError, TrackingURIError, folder_name

    name = args.experiment or (args.parent_runs[0] if args.parent_runs else Path(args.points).stem)
    try:
        storage.refuse_remote(args.out or "", "--out", "the report and its plot")
        out = Path(args.out or Path("fit_reports") / f"mup-{folder_name(name)}")
        report, files = write_mup_report(_points(args), out)
    except (FitError, ExperimentRecordError, TrackingURIError, ValueError) as e:
        print(f"ditscale mup-report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a --points file that is missing, an output directory that cannot be made
        msg = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        print(f"ditscale mup-report: error: {msg}", file=sys.stderr)
        return 2
    for s in ("standard", "mup"):
        if s in report:
            print(f"{s}.optimal_lr = {json.dumps(report[s]['optimal_lr'])}")
    print("\n".join(report["statements"]))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0
