"""`ditscale jobs`: list, inspect, tail or stop jobs on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from jobs.cli.submit import add_conn_args, run_cluster_command, server_reason
from jobs.cluster.submit import (
    SubmitError,
    follow_logs,
    job_row,
    make_client,
    status_str,
    wait_for_job,
)
from pipelines.cli.parsers import add_subcommand, command_parser


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("jobs", "List, inspect, tail or stop jobs on a Ray cluster.")
    sub = p.add_subparsers(dest="action", required=True)
    ls = add_subcommand(sub, "list", "all jobs with their status")
    add_conn_args(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st = add_subcommand(sub, "status", "the status of one job")
    add_conn_args(st)
    st.add_argument("job_id", help="the job's submission id (`ditscale jobs list`)")
    st.add_argument("--json", action="store_true", help="print the full job info as JSON")
    lg = add_subcommand(sub, "logs", "the logs of one job")
    add_conn_args(lg)
    lg.add_argument("job_id", help="the job's submission id (`ditscale jobs list`)")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    sp = add_subcommand(sub, "stop", "stop a running job")
    add_conn_args(sp)
    sp.add_argument("job_id", help="the job's submission id (`ditscale jobs list`)")
    sp.add_argument("--wait", action="store_true", help="wait until the job is stopped")
    return p


def _jobs(argv: list[str]) -> int:
    opts = build_parser().parse_args(argv)
    client = make_client(opts.address, opts.token)
    if opts.action == "list":
        try:
            jobs = client.list_jobs()
        except RuntimeError as exc:  # the job server's HTTP error: one line, not a traceback
            raise SubmitError(f"listing the jobs at {opts.address}: {server_reason(exc)}") from exc
        rows = sorted((job_row(j) for j in jobs), key=lambda r: r["start_time"] or 0)
        if opts.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'SUBMISSION ID':<34} {'STATUS':<10} ENTRYPOINT")
        for r in rows:
            print(f"{r['submission_id']:<34} {r['status']:<10} {r['entrypoint']}")
        return 0
    if opts.action in ("status", "logs", "stop"):  # an unknown id: one line naming it, not a traceback
        try:
            info = client.get_job_info(opts.job_id)
        except RuntimeError as exc:
            raise SubmitError(f"job {opts.job_id}: {exc}") from exc
    if opts.action == "status":
        if opts.json:
            print(json.dumps({"submission_id": opts.job_id, **job_row(info)}, indent=2, default=str))
        else:
            msg = f" ({info.message})" if info.message else ""
            print(f"{opts.job_id}: {status_str(info.status)}{msg}")
        return 0
    if opts.action == "logs":
        if opts.follow:
            follow_logs(client, opts.job_id)
        else:
            sys.stdout.write(client.get_job_logs(opts.job_id))
        return 0
    if opts.action == "stop":
        if not client.stop_job(opts.job_id):  # False: the job had already ended
            print(f"{opts.job_id}: already {status_str(client.get_job_status(opts.job_id))}; nothing to stop")
            return 0
        print(f"stop requested for {opts.job_id}")
        if opts.wait:
            print(f"{opts.job_id}: {wait_for_job(client, opts.job_id, timeout_s=120)}")
        return 0
    raise AssertionError(opts.action)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale jobs`."""
    return run_cluster_command("jobs", _jobs, argv)
