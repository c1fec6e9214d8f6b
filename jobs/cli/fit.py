"""`ditscale fit`: scaling-law fits of a sweep's MLflow record, with plots and a JSON report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from jobs.cli.common import sweep_command_parser
from pipelines.cli.parsers import options_for, positive_int, seed_int
from pipelines.infra import storage


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale fit`."""
    p = sweep_command_parser(
        "fit",
        "Fit FID(C) = A * C^-beta + FID_inf (frontier and per model), the "
        "validation-loss law and N*(C) from isoFLOP minima to a sweep, with 95% intervals "
        "(profile likelihood; bootstrap for N*) and a held-out check; for a sweep with architecture arms "
        "also each arm's "
        "frontier law (arms.<arm>.beta / beta_ci) and where the arms' fits cross; plots + "
        "fit_report.json, logged to the sweep's run.",
        "point metric to fit (a points.json key)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default: fit_reports/<experiment or run id>, with -pooled for a --replicate fit)",
    )
    p.add_argument("--n-boot", type=positive_int, default=200, help="bootstrap resamples per fit")
    p.add_argument("--seed", type=seed_int, default=0, help="bootstrap seed")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    p.add_argument(
        "--replicate",
        dest="replicates",
        action="append",
        metavar="EXPERIMENT",
        default=None,
        help="MLflow experiment of another sweep of the same grid with another training seed (repeatable): the "
        "fits take each point's mean over all the sweeps; the report is logged to the first sweep's run under "
        "fit_replicates/ (metrics fit.pooled.*), beside its own fit",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale fit`."""
    args = build_parser().parse_args(argv)
    from ditcore.config import ConfigError
    from ditcore.scaling import FitError
    from jobs.scaling.fit import REPORT_NAME, run_fit
    from jobs.scaling.summary import format_laws
    from pipelines.infra.tracking import ExperimentRecordError, TrackingURIError

    if args.out:
        from jobs.scaling.fit import check_output_folder

        try:
            storage.refuse_remote(args.out, "--out", "the fit report and its plots")
            check_output_folder(Path(args.out))  # before the fit; made once there is a report to write
        except (ConfigError, ValueError) as e:
            print(f"ditscale fit: error: --out {args.out!r}: {e}", file=sys.stderr)
            return 2
    try:
        options = options_for(run_fit, args, parent_run_id=args.parent_run, out_dir=args.out, log=not args.no_log)
        report, out, written = run_fit(**options)
    except (FitError, ExperimentRecordError, TrackingURIError, ConfigError) as e:
        print(f"ditscale fit: error: {e}", file=sys.stderr)
        return 2
    print(format_laws(report))
    plots = sorted(f.name for f in written)
    print(f"wrote {out / REPORT_NAME} and {len(plots)} plots to {out}: {', '.join(plots)}")
    return 0
