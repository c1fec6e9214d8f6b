"""`ditscale submit` / `ditscale jobs`: run the project's jobs on a Ray cluster through the Ray Jobs API.

    ditscale submit precompute --address http://127.0.0.1:8265 --config configs/precompute/builtin.yaml out=s3://b/x
    ditscale submit sweep      --address URL --config configs/sweep/tiny.yaml [k=v ...] [--wait]
    ditscale submit fit        --address URL --config ...   (extra flags after the overrides pass through)
    ditscale submit serve      --address URL --config serve/config.yaml
    ditscale jobs list|status ID|logs ID [--follow]|stop ID --address URL

The job ships this repository as the runtime env's `working_dir` (minus data, outputs, virtualenvs and
tracking stores) and runs `python -m <module> --config ... k=v ...` on the cluster, so the code that runs
there is exactly the local checkout. Token auth (Ray >= 2.52): the token is read the way Ray reads it
(`--token`, then RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token unless RAY_AUTH_MODE=disabled)
and sent as an `Authorization: Bearer` header, so it works whether or not this process initialised Ray.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

# Job kind -> the module its entrypoint runs with `python -m`. Every module here is runnable that way.
ENTRYPOINTS: dict[str, list[str]] = {
    "precompute": ["python", "-m", "pipelines.precompute"],
    "sweep": ["python", "-m", "jobs.sweep"],
    "fit": ["python", "-m", "jobs.cli", "fit"],  # takes --experiment NAME (passed through), not --config
    # serve.cli serves two commands and takes the command name first; the CLI dispatcher passes it on.
    "serve": ["python", "-m", "jobs.cli", "serve"],
}

# Never uploaded with the working directory: data and results belong in storage (s3://), not in the package.
WORKING_DIR_EXCLUDES: list[str] = [
    "data/",
    "outputs/",
    ".venv/",
    "mlruns/",
    "mlflow.db",
    "runs/",
    ".git/",
    "**/__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    "build/",
    "dist/",
]

# Environment every submitted job gets (the cluster's own env, e.g. MLFLOW_TRACKING_URI, is inherited).
JOB_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PYTHONUNBUFFERED": "1",  # logs stream to `ditscale jobs logs --follow` as they are printed
    "TOKENIZERS_PARALLELISM": "false",
}

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
REPO_ROOT = Path(__file__).resolve().parents[2]


class SubmitError(RuntimeError):
    """A submission or job query failed; the message says what and where."""


def default_address() -> str:
    """The job server to talk to: RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS, else the local dashboard."""
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")):
            return value
    return "http://127.0.0.1:8265"


def resolve_auth_token(token: str | None = None) -> str | None:
    """The Ray auth token to send, looked up in Ray's own order; None when auth is disabled or no token exists."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        p = Path(path).expanduser()
        if not p.is_file() or not p.read_text().strip():
            # Ray itself treats an unreadable RAY_AUTH_TOKEN_PATH as fatal; say so before any request.
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path}: file missing or empty")
        return p.read_text().strip()
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and default.read_text().strip():
        return default.read_text().strip()
    return None


def auth_headers(token: str | None = None) -> dict[str, str]:
    """`Authorization: Bearer <token>` when a token is configured (harmless for clusters without auth)."""
    tok = resolve_auth_token(token)
    return {"Authorization": f"Bearer {tok}"} if tok else {}


def make_client(address: str, token: str | None = None) -> Any:
    """A JobSubmissionClient for `address` with the auth header; a clear error when the server is unreachable."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers(token))
    except SubmitError:
        raise
    except Exception as exc:  # ConnectionError, 401/403 from the auth middleware, version mismatch ...
        raise SubmitError(f"cannot reach the Ray job server at {address}: {exc}") from exc


def build_entrypoint(kind: str, config: str | None, args: list[str]) -> str:
    """The shell command the job runs: `python -m <module> [--config FILE] [k=v ... / extra flags]`."""
    if kind not in ENTRYPOINTS:
        raise SubmitError(f"unknown job kind {kind!r}; choose one of {sorted(ENTRYPOINTS)}")
    cmd = list(ENTRYPOINTS[kind])
    if config:
        cmd += ["--config", config]
    cmd += list(args)
    return shlex.join(cmd)


def build_runtime_env(working_dir: str | Path, env: dict[str, str] | None = None, pip: list[str] | None = None) -> dict:
    """Runtime env shipping `working_dir` minus data/outputs/venv/mlruns, plus the job environment."""
    wd = Path(working_dir).resolve()
    if not wd.is_dir():
        raise SubmitError(f"--working-dir {working_dir}: not a directory")
    runtime_env: dict[str, Any] = {
        "working_dir": str(wd),
        "excludes": list(WORKING_DIR_EXCLUDES),
        "env_vars": {**JOB_ENV, **(env or {})},
    }
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env


def _check_config_path(config: str | None, working_dir: Path) -> None:
    """A local config path must exist and be inside the uploaded working dir (remote URIs pass as they are)."""
    if not config or "://" in config:
        return
    p = Path(config)
    full = p if p.is_absolute() else (Path.cwd() / p)
    if not full.is_file():
        raise SubmitError(f"--config {config}: file not found")
    try:
        full.resolve().relative_to(working_dir.resolve())
    except ValueError as exc:
        raise SubmitError(f"--config {config}: must be inside the working dir {working_dir} that is uploaded") from exc


def _parse_env(items: list[str]) -> dict[str, str]:
    """`--env KEY=VALUE` (or `--env KEY`, copying the local value)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise SubmitError(f"--env {item!r}: expected KEY=VALUE or KEY")
        if not sep:
            if key not in os.environ:
                raise SubmitError(f"--env {key}: not set in the local environment")
            value = os.environ[key]
        out[key] = value
    return out


def _status_str(status: Any) -> str:
    return str(getattr(status, "value", status))


def _follow_logs(client: Any, job_id: str) -> None:
    """Stream a job's logs until it reaches a terminal state."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(_tail())


def wait_for_job(client: Any, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Poll until the job is SUCCEEDED/FAILED/STOPPED (or the deadline passes) and return that status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = _status_str(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} still {status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def _add_conn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=default_address(),
                   help="Ray job server (dashboard) URL, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS or localhost)")
    p.add_argument("--token", default=None,
                   help="Ray auth token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")


def _submit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ditscale submit",
        allow_abbrev=False,  # unknown flags pass through to the job, so never guess an abbreviation
        description="Submit a ditscale job to a Ray cluster through the Ray Jobs API; the repository is "
                    "uploaded as the job's working_dir (without data/, outputs/, .venv/, mlruns/).",
        epilog="Example: ditscale submit precompute --address http://127.0.0.1:8265 "
               "--config configs/precompute/builtin.yaml output=s3://bucket/latents/builtin",
    )
    p.add_argument("kind", choices=sorted(ENTRYPOINTS), help="which job to run")
    _add_conn_args(p)
    p.add_argument("--config", default=None, help="YAML config (path inside the repository, relative to it)")
    p.add_argument("--working-dir", default=str(REPO_ROOT), help="directory uploaded as the job's working_dir (default: the repo)")
    p.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]", help="extra job environment variable (repeatable)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ", help="extra pip requirement for the job's runtime env")
    p.add_argument("--submission-id", default=None, help="job id to use (default: generated by Ray)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs reserved for the job's driver")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs reserved for the job's driver")
    p.add_argument("--wait", action="store_true", help="follow the logs until the job ends; exit 0 only if it SUCCEEDED")
    p.add_argument("--dry-run", action="store_true", help="print the entrypoint and runtime env as JSON, submit nothing")
    p.add_argument("args", nargs="*", help="`key.sub=value` overrides (and any extra flags) passed to the job")
    return p


def _jobs_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ditscale jobs", description="List, inspect, tail or stop jobs on a Ray cluster.")
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="all jobs with their status")
    _add_conn_args(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st = sub.add_parser("status", help="the status of one job")
    _add_conn_args(st)
    st.add_argument("job_id")
    st.add_argument("--json", action="store_true", help="print the full job info as JSON")
    lg = sub.add_parser("logs", help="the logs of one job")
    _add_conn_args(lg)
    lg.add_argument("job_id")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    sp = sub.add_parser("stop", help="stop a running job")
    _add_conn_args(sp)
    sp.add_argument("job_id")
    sp.add_argument("--wait", action="store_true", help="wait until the job is stopped")
    return p


def _job_row(job: Any) -> dict:
    return {
        "submission_id": job.submission_id or job.job_id,
        "status": _status_str(job.status),
        "entrypoint": job.entrypoint,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "message": job.message,
    }


def _cmd_submit(argv: list[str]) -> int:
    parser = _submit_parser()
    # Unknown flags (e.g. `--experiment NAME` for the fit) are passed on to the job, after the overrides.
    opts, extra = parser.parse_known_args(argv)
    args = list(opts.args) + list(extra)
    working_dir = Path(opts.working_dir)
    _check_config_path(opts.config, working_dir)
    config = opts.config
    if config and "://" not in config:
        # The job runs from the root of the uploaded working_dir, so hand it the path relative to that root.
        config = str((Path.cwd() / config).resolve().relative_to(working_dir.resolve()))
    entrypoint = build_entrypoint(opts.kind, config, args)
    runtime_env = build_runtime_env(working_dir, _parse_env(opts.env), opts.pip)
    if opts.dry_run:
        print(json.dumps({"address": opts.address, "entrypoint": entrypoint, "runtime_env": runtime_env}, indent=2))
        return 0
    client = make_client(opts.address, opts.token)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        submission_id=opts.submission_id,
        entrypoint_num_cpus=opts.num_cpus,
        entrypoint_num_gpus=opts.num_gpus,
        metadata={"ditscale.kind": opts.kind},
    )
    print(f"submitted {opts.kind} job {job_id} to {opts.address}")
    print(f"  entrypoint: {entrypoint}")
    print(f"  follow: ditscale jobs logs {job_id} --follow --address {opts.address}")
    if not opts.wait:
        return 0
    _follow_logs(client, job_id)
    status = wait_for_job(client, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _cmd_jobs(argv: list[str]) -> int:
    opts = _jobs_parser().parse_args(argv)
    client = make_client(opts.address, opts.token)
    if opts.action == "list":
        rows = sorted((_job_row(j) for j in client.list_jobs()), key=lambda r: r["start_time"] or 0)
        if opts.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'SUBMISSION ID':<34} {'STATUS':<10} ENTRYPOINT")
        for r in rows:
            print(f"{r['submission_id']:<34} {r['status']:<10} {r['entrypoint']}")
        return 0
    if opts.action == "status":
        try:
            info = client.get_job_info(opts.job_id)
        except RuntimeError as exc:
            raise SubmitError(f"job {opts.job_id}: {exc}") from exc
        if opts.json:
            print(json.dumps({"submission_id": opts.job_id, **_job_row(info)}, indent=2, default=str))
        else:
            msg = f" ({info.message})" if info.message else ""
            print(f"{opts.job_id}: {_status_str(info.status)}{msg}")
        return 0
    if opts.action == "logs":
        if opts.follow:
            _follow_logs(client, opts.job_id)
        else:
            sys.stdout.write(client.get_job_logs(opts.job_id))
        return 0
    if opts.action == "stop":
        client.stop_job(opts.job_id)
        print(f"stop requested for {opts.job_id}")
        if opts.wait:
            print(f"{opts.job_id}: {wait_for_job(client, opts.job_id, timeout_s=120)}")
        return 0
    raise AssertionError(opts.action)


def main(argv: list[str] | None = None) -> int:
    """`ditscale submit ...` / `ditscale jobs ...` (argv[0] is the command name)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not argv or argv[0] not in ("submit", "jobs"):
        print("usage: ditscale submit {precompute,sweep,fit,serve} ... | ditscale jobs {list,status,logs,stop} ...",
              file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    try:
        return _cmd_submit(rest) if command == "submit" else _cmd_jobs(rest)
    except SubmitError as exc:
        print(f"ditscale {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
