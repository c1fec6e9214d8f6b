"""Running the project's jobs on a Ray cluster through the Ray Jobs API (`ditscale submit`, `ditscale jobs`).

    ditscale submit precompute --address http://127.0.0.1:8265 --config configs/precompute/builtin.yaml \
        output=s3://b/latents vae.path=s3://b/vae fid.feature_net=s3://b/feature_net
    ditscale submit sweep      --address URL --config configs/sweep/tiny.yaml [k=v ...] [--wait]
    ditscale submit fit        --address URL --experiment NAME   (the job's own flags pass through; after `--` too)
    ditscale submit serve      --address URL --config serve/config.yaml
    ditscale jobs list|status ID|logs ID [--follow]|stop ID --address URL

The job ships this repository as the runtime env's `working_dir` (minus data, outputs, virtualenvs and
tracking stores) and runs `python -m <module> --config ... k=v ...` on the cluster, so the code that runs
there is exactly the local checkout. Token auth (Ray >= 2.52): the token is read the way Ray reads it
(`--token`, then RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token unless RAY_AUTH_MODE=disabled)
and sent as an `Authorization: Bearer` header, so it works whether or not this process initialised Ray.
"""

from __future__ import annotations

import asyncio
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
# Gitignore patterns: the leading "/" anchors a folder at the working directory's top ("data/" alone would drop
# every folder named data, the package ditcore/data among them).
WORKING_DIR_EXCLUDES: list[str] = [
    "/data/",
    "/outputs/",
    "/.venv/",
    "/mlruns/",
    "/mlflow.db",
    "/runs/",
    "/.git/",
    "**/__pycache__/",
    "*.egg-info/",
    "/.pytest_cache/",
    "/build/",
    "/dist/",
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

    if not str(address).startswith(("http://", "https://")):  # Ray would take it for a GCS and retry for a while
        raise SubmitError(
            f"--address {address!r}: the Ray job server's URL, http(s)://HOST:8265 (not a GCS address HOST:6379)"
        )
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
    if not (wd / "pyproject.toml").is_file() or not all((wd / pkg).is_dir() for pkg in ("ditcore", "jobs")):
        # e.g. a non-editable install, whose default is site-packages: gigabytes, and no project to run
        raise SubmitError(
            f"--working-dir {working_dir}: not a ditscale checkout (no pyproject.toml beside ditcore/ and jobs/); "
            f"give the repository's directory"
        )
    runtime_env: dict[str, Any] = {
        "working_dir": str(wd),
        "excludes": list(WORKING_DIR_EXCLUDES),
        "env_vars": {**JOB_ENV, **(env or {})},
    }
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env


def job_config_path(config: str | None, working_dir: Path) -> str | None:
    """The --config path the job is given: relative to the uploaded working dir's root, where the job runs.

    A relative local path is looked up from the current directory, else inside the working dir (so
    `--config configs/sweep/tiny.yaml` works from anywhere); it must exist and lie inside the working dir. Remote
    URIs pass as they are."""
    if not config or "://" in config:
        return config
    p = Path(config)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, working_dir / p]
    full = next((c for c in candidates if c.is_file()), None)
    if full is None:
        raise SubmitError(f"--config {config}: file not found (looked in {', '.join(str(c) for c in candidates)})")
    try:
        return str(full.resolve().relative_to(working_dir.resolve()))
    except ValueError as exc:
        raise SubmitError(f"--config {config}: must be inside the working dir {working_dir} that is uploaded") from exc


def parse_env(items: list[str]) -> dict[str, str]:
    """Job environment from `KEY=VALUE` items (a bare `KEY` copies the local value)."""
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


def status_str(status: Any) -> str:
    """A job status as its plain name (SUCCEEDED, RUNNING, ...)."""
    return str(getattr(status, "value", status))


def follow_logs(client: Any, job_id: str) -> None:
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
        status = status_str(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} still {status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def job_row(job: Any) -> dict:
    """The fields of a job shown by `ditscale jobs`."""
    return {
        "submission_id": job.submission_id or job.job_id,
        "status": status_str(job.status),
        "entrypoint": job.entrypoint,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "message": job.message,
    }
