"""`ditscale report`: the fitted scaling laws (with intervals) and the table of a sweep's points."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence

from jobs.cli.common import sweep_command_parser
from pipelines.cli.parsers import positive_int


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale report`."""
    p = sweep_command_parser(
        "report",
        "The fitted scaling laws (with intervals) and the table of a sweep's "
        "points; uses the report `ditscale fit` stored, or fits now.",
        "point metric of the laws and the table",
    )
    p.add_argument("--refit", action="store_true", help="fit now even if `ditscale fit` stored a report")
    p.add_argument("--n-boot", type=positive_int, default=200, help="bootstrap resamples when fitting here")
    p.add_argument("--json", action="store_true", help="print the report and points as JSON instead of text")
    return p


def stored_report(mlflow_client: Any, parent_run_id: str) -> dict | None:
    """The fit_report.json logged by `ditscale fit` on the parent run, or None."""
    from jobs.scaling.fit import ARTIFACT_DIR, REPORT_NAME
    from pipelines.infra.tracking import read_json_artifact

    names = {a.path for a in mlflow_client.list_artifacts(parent_run_id, ARTIFACT_DIR)}
    path = f"{ARTIFACT_DIR}/{REPORT_NAME}"
    return read_json_artifact(mlflow_client, parent_run_id, path) if path in names else None


def stored_is_stale(report: dict, rows: list[dict]) -> bool:
    """Whether a stored fit report no longer matches the sweep's points (a trial or an evaluation added or
    changed since `ditscale fit`). Reports written before the digest existed are compared by point count."""
    from jobs.scaling.fit import points_digest

    if report.get("points_digest"):
        return report["points_digest"] != points_digest(rows)
    return report.get("n_points") != len(rows)


_NOT_METRICS = ("flops", "budget_flops", "params", "step", "images_seen")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale report`."""
    args = build_parser().parse_args(argv)
    from ditcore.scaling import FitError
    from jobs.scaling.fit import fit_points, json_safe
    from jobs.scaling.points import read_points, to_dicts
    from jobs.scaling.summary import format_laws, trial_table
    from pipelines.infra.tracking import ExperimentRecordError, TrackingURIError, client

    try:
        mlflow_client = client(args.tracking_uri, must_exist=True)
        parent, points = read_points(mlflow_client, experiment=args.experiment, parent_run_id=args.parent_run)
    except (ExperimentRecordError, TrackingURIError) as e:
        print(f"ditscale report: error: {e}", file=sys.stderr)
        return 2
    rows = to_dicts(points)
    if rows and not any(isinstance(r.get(args.metric), (int, float)) for r in rows):
        known = sorted({k for r in rows for k, v in r.items() if isinstance(v, float) and k not in _NOT_METRICS})
        print(
            f"ditscale report: error: --metric {args.metric!r}: no point has it ({len(rows)} points; "
            f"their metrics: {', '.join(known)})",
            file=sys.stderr,
        )
        return 2
    report, stale = (None if args.refit else stored_report(mlflow_client, parent.info.run_id)), ""
    if report is not None and report.get("metric") != args.metric:
        report = None
    elif report is not None and stored_is_stale(report, rows):
        report, stale = None, "the stored fit is out of date (the sweep's points changed since `ditscale fit`); "
    note = ""
    if report is None:
        try:
            report = fit_points(rows, metric=args.metric, n_boot=args.n_boot)
            note = f"({stale}fitted now; `ditscale fit` stores the report and plots on the sweep run)"
        except FitError as e:
            note = f"({stale}no laws: {e})"
    if args.json:
        doc = {"parent_run_id": parent.info.run_id, "report": report, "points": rows}
        print(json.dumps(json_safe(doc), indent=2, default=str, allow_nan=False))
        return 0
    print(
        f"sweep run {parent.info.run_id}: {len(points)} points from {len({p.run_id for p in points})} trials "
        f"{note}".rstrip()
    )
    if report is not None:
        print(format_laws(report))
    print()
    print(trial_table(rows, args.metric))
    return 0
