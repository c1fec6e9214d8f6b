"""Shared test set-up: quiet, offline environment and a local S3 server fixture."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.infra.ray_runtime import free_port  # noqa: F401  (tests take their ports from here)

_RAY_BEFORE = pytest.StashKey[bool]()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def wait_for_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll until something listens on 127.0.0.1:port (fails early if `proc` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def assert_load_errors_name_the_path(load, tmp_path: Path, empty_error: type[Exception], empty_match: str) -> None:
    """`load` of a saved-model folder: a path that does not exist raises FileNotFoundError naming it; an empty folder
    (no config.json) raises `empty_error` matching `empty_match`."""
    with pytest.raises(FileNotFoundError, match="missing_model"):
        load(tmp_path / "missing_model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(empty_error, match=empty_match):
        load(tmp_path / "empty")


@contextlib.contextmanager
def loopback_mlflow_server(root: Path):
    """`mlflow server` on 127.0.0.1:<free port> in its own process group (sqlite backend root/server.db, proxied
    artifacts in root/artifacts, log in root/server.log); yields its URL once /health answers, then stops the group
    (SIGTERM, SIGKILL after 10 s)."""
    import urllib.request

    port = free_port()
    exe = str(Path(sys.executable).with_name("mlflow"))
    cmd = [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += [
        "--backend-store-uri",
        f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # poll /health until the server answers (no fixed sleep)
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server not healthy: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        # stop the server (and its uvicorn/gunicorn workers) by our own process group id
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3-compatible HTTP server (moto_server) on 127.0.0.1; AWS_* env points at it."""
    # Prefer the virtualenv's own server (its moto version is pinned) over any on PATH.
    exe = str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        exe = shutil.which("moto_server") or exe
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")
    }
    try:
        wait_for_port(port, proc=proc)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_s3):
    """A fresh empty bucket on the local S3 server; yields its s3:// URI."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=name)
    return f"s3://{name}"


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """Note whether Ray was already up before this test's fixtures ran (a module fixture of an earlier slow test)."""
    item.stash[_RAY_BEFORE] = _ray_running()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Keep the tiers honest: a test not marked `slow` fails when Ray starts for it (in it or in its fixtures).

    A Ray left up by an earlier slow test's module fixture does not count: under `make test-fast` that test is
    deselected, and the fast test runs without Ray.
    """
    if item.get_closest_marker("slow") is not None:
        yield
        return
    started = []
    try:
        import ray
    except ImportError:
        ray = None
    real_init = getattr(ray, "init", None)
    if real_init is not None:

        def recording_init(*args, **kwargs):
            started.append(True)
            return real_init(*args, **kwargs)

        ray.init = recording_init
    before = item.stash.get(_RAY_BEFORE, False)
    try:
        running = _ray_running()
        yield
        running = running or _ray_running()
    finally:
        if real_init is not None:
            sys.modules["ray"].init = real_init
    if (running and not before) or started:
        pytest.fail(f"{item.nodeid} starts Ray but is not marked slow (make test-fast must not start Ray)")
