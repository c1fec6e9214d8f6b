"""`ditscale report`: the fitted scaling laws (with intervals) and the table of a sweep's trials."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ditcore.scaling import FitError
from pipelines.infra.tracking import add_sweep_source_arguments, read_json_artifact

COLUMNS = ("model", "params", "budget", "FLOPs", "FID", "val loss", "checkpoint")


def _fmt(v: Any, spec: str) -> str:
    """Format a number, or '-' for a missing value."""
    if v is None:
        return "-"
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def trial_table(points: list[dict], metric: str = "fid") -> str:
    """Text table of points sorted by model size, then compute: model, params, budget, FLOPs, FID, val loss, checkpoint."""
    rows = [COLUMNS]
    for p in sorted(points, key=lambda p: (float(p.get("params") or 0), str(p.get("model")),
                                           float(p.get("budget_flops") or 0), float(p.get("flops") or 0))):
        rows.append((str(p.get("model", "-")), _fmt(p.get("params"), ".3g"), _fmt(p.get("budget_flops"), ".3g"),
                     _fmt(p.get("flops"), ".3g"), _fmt(p.get(metric), ".3f"), _fmt(p.get("val_loss"), ".4f"),
                     str(p.get("checkpoint") or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def stored_report(client, parent_run_id: str) -> dict | None:
    """The fit_report.json logged by `ditscale fit` on the parent run, or None."""
    from jobs.scaling.fit import ARTIFACT_DIR, REPORT_NAME

    names = {a.path for a in client.list_artifacts(parent_run_id, ARTIFACT_DIR)}
    path = f"{ARTIFACT_DIR}/{REPORT_NAME}"
    if path not in names:
        return None
    return read_json_artifact(client, parent_run_id, path)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale report`."""
    p = argparse.ArgumentParser(prog="ditscale report", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_sweep_source_arguments(p)
    p.add_argument("--metric", default="fid", help="point metric of the laws and the table")
    p.add_argument("--refit", action="store_true", help="fit now even if `ditscale fit` stored a report")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples when fitting here")
    p.add_argument("--json", action="store_true", help="print the report and points as JSON instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ditscale report`."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    from jobs.scaling.fit import fit_points, format_laws
    from pipelines.infra.tracking import ExperimentRecordError, TrackingURIError, get_client, sweep_points

    try:
        client = get_client(args.tracking_uri)
        parent, points = sweep_points(client, experiment=args.experiment, parent_run_id=args.parent_run)
    except (ExperimentRecordError, TrackingURIError) as e:
        print(f"ditscale report: error: {e}", file=sys.stderr)
        return 2
    report, note = None if args.refit else stored_report(client, parent.info.run_id), ""
    if report is not None and report.get("metric") != args.metric:
        report = None
    if report is None:
        try:
            report = fit_points(points, metric=args.metric, n_boot=args.n_boot)
            note = "(fitted now; `ditscale fit` stores the report and plots on the sweep run)"
        except FitError as e:
            note = f"(no laws: {e})"
    if args.json:
        print(json.dumps({"parent_run_id": parent.info.run_id, "report": report, "points": points}, indent=2,
                         default=str))
        return 0
    print(f"sweep run {parent.info.run_id}: {len(points)} points from "
          f"{len({p.get('run_id') for p in points})} trials {note}".rstrip())
    if report is not None:
        print(format_laws(report))
    print()
    print(trial_table(points, args.metric))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
