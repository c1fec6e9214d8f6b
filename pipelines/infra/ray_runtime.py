"""The Ray runtime: the environment ditscale's Ray processes get, connecting or starting Ray, and a local head.

Every job reaches Ray through `init_ray`: it applies `RAY_ENV` (offline model loading, no usage stats or MLflow
telemetry, Ray Data's per-execution INFO lines kept in the session log, Ray Train's health check at 0.1 s so a
`ray.train.report` does not block for seconds) before `ray.init`, so worker processes inherit it. Values the user
already set win. On a cluster, set the same variables in the cluster's environment or the job's runtime_env.

`LocalRayHead` is the head the quickstart owns: `ray start --head --block` in its own session on free ports,
stopped by signalling exactly its own processes (never a global `ray stop`).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Container, Mapping

RAY_DATA_LOGGING_CONFIG = Path(__file__).with_name("ray_data_logging.yaml")
DASHBOARD_PORT = 8265  # Ray's default

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING_CONFIG),
    # Ray Train V2 polls its workers at this interval; at the 1 s+ default every report() blocks that long.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
}


def apply_ray_env(extra: Mapping[str, str] | None = None) -> None:
    """Set RAY_ENV (and `extra`) in this process's environment where not already set; call before Ray starts."""
    for key, value in {**RAY_ENV, **(extra or {})}.items():
        os.environ.setdefault(key, value)


def cluster_address(address: str | None = None) -> str | None:
    """The cluster to connect to: `address`, else $RAY_ADDRESS, else None (a fresh local instance).

    An http(s) RAY_ADDRESS is a job server's (what `ditscale submit` and `ray job submit` read), which ray.init
    cannot connect to: it is passed over, with a note, and this process runs on a local Ray."""
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS") or None
    if env and env.startswith(("http://", "https://")):
        print(
            f"[ditscale] RAY_ADDRESS={env} is a job server's address (for `ditscale submit`): this command runs on a "
            f"local Ray; to run it on that cluster, submit it",
            file=sys.stderr,
            flush=True,
        )
        return None
    return env


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    runtime_env: dict | None = None,
    include_dashboard: bool = True,
    logging_level: str | int | None = None,
) -> bool:
    """Connect to the cluster (`address` / RAY_ADDRESS) or start a fresh local Ray; True if this call started it.

    A local instance is always a new one (`address="local"`), never a `ray start` cluster left running on the
    machine; `num_cpus` sizes it (ignored when connecting). Does nothing when Ray is already initialised.

    A local instance runs the dashboard (on 127.0.0.1:8265, or a free port when that one is taken) unless
    `include_dashboard` is False: it serves Ray's State API, which `ray list actors`, `ray.util.state` and Ray
    Train's placement-group cleaner read. Without it the cleaner cannot tell whether a training controller died,
    logs "Failed to query Ray Train Controller actor state" every few seconds, and never frees a dead run's
    placement group.
    """
    import ray

    if ray.is_initialized():
        return False
    apply_ray_env()
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if logging_level is not None:
        kwargs["logging_level"] = logging_level
    target = cluster_address(address)
    if target:
        kwargs["address"] = target
    else:
        kwargs.update(address="local", include_dashboard=include_dashboard)
        if include_dashboard:
            kwargs.update(dashboard_host="127.0.0.1", dashboard_port=_port_or_free(DASHBOARD_PORT))
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    return True


# Ray's workers bind ports in 10002-19999 (`ray start`'s --min/--max-worker-port defaults).
_RAY_WORKER_PORTS_END = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _quiet_port_range() -> range | None:
    """Ports that neither the kernel hands out (bind to port 0, outgoing connections) nor Ray's workers take.

    A port the kernel picked with bind(0) is free only until the next outgoing connection or bind(0) on the machine
    takes it; a process that starts many others (`ray start`) does both while it comes up. Ports below the kernel's
    ephemeral range and above Ray's worker ports are taken only by explicit binds. None where there is no such gap
    (or the kernel's range cannot be read).
    """
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return range(_RAY_WORKER_PORTS_END, low) if low - _RAY_WORKER_PORTS_END >= 1000 else None


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(exclude: Container[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that is free right now, outside the kernel's ephemeral range where there is room.

    `exclude`: ports already chosen for something that has not bound them yet.
    """
    quiet = _quiet_port_range()
    if quiet is not None:
        rng = random.Random()  # independent of the caller's seeded `random`: two processes must not pick alike
        for _ in range(200):
            port = rng.choice(quiet)
            if port not in exclude and _bindable(port):
                return port
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


def free_ports(n: int) -> list[int]:
    """`n` distinct ports from `free_port`, for listeners that will all be bound later (one process's flags)."""
    chosen: list[int] = []
    for _ in range(n):
        chosen.append(free_port(exclude=chosen))
    return chosen


def _port_or_free(port: int) -> int:
    """`port` if nothing on 127.0.0.1 holds it right now, else a free port."""
    return port if _bindable(port) else free_port()


def num_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def head_cpus() -> int:
    """CPUs a LocalRayHead announces by default: the cores of this machine, at least 2 (a driver beside one task)."""
    return max(2, num_cores())


def _session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (a `ray start --block` leader and everything it spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


# The listeners of a `ray start --head`, by flag; each gets a port chosen free.
_HEAD_PORTS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


class _PortTaken(Exception):
    """`ray start --head` exited because a port chosen for it was bound by someone else first."""


def _log_lines(log_path: Path) -> list[str]:
    try:
        return log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _says_started(log_path: Path) -> bool:
    """Whether `ray start`'s log says the head is up."""
    return any("Ray runtime started" in line for line in _log_lines(log_path))


# How `ray start` and its dashboard say that a port is taken (the dashboard's log is quoted in `ray start`'s).
_PORT_TAKEN = ("address already in use", "already occupied")


def _port_taken_line(log_path: Path) -> str | None:
    """The line of a failed `ray start`'s log that says a port was already in use, if there is one."""
    for line in reversed(_log_lines(log_path)):
        if any(marker in line.lower() for marker in _PORT_TAKEN):
            return line.strip()[-300:]
    return None


class LocalRayHead:
    """A Ray head on this machine owned by the caller: `ray start --head --block` in its own session.

    Unlike a bare `ray.init()`, every process of this cluster (workers, Train/Tune internals, Serve's controller
    and replicas) gets RAY_ADDRESS in its environment, so nothing has to guess which of several local Ray
    instances is meant; every port is chosen free; and `stop` signals exactly its own processes.
    """

    def __init__(self, log_dir: Path, num_cpus: int | None = None) -> None:
        self.num_cpus = num_cpus or head_cpus()
        self.log_dir = Path(log_dir)
        self.proc: subprocess.Popen | None = None
        self.temp_dir: str | None = None
        self.choose_ports()

    def choose_ports(self) -> None:
        """Pick a distinct free port for each listener of the head (again after a port was taken meanwhile)."""
        self.ports = dict(zip(_HEAD_PORTS, free_ports(len(_HEAD_PORTS))))
        self.gcs_port = self.ports["port"]
        self.dashboard_port = self.ports["dashboard-port"]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    def _command(self) -> list[str]:
        ray_bin = Path(sys.executable).with_name("ray")
        ports = self.ports
        return [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            *(f"--{k}={v}" for k, v in ports.items()),
        ]

    def start(self, timeout: float = 300.0, attempts: int = 3) -> None:
        """Start the head, connect this process to it, and export RAY_ADDRESS for everything started later.

        A port chosen free can be taken by another process before the head binds it; `ray start` then exits saying
        so, and the head is started again on newly chosen ports, up to `attempts` times in all.
        """
        for attempt in range(1, attempts + 1):
            log_path = self.log_dir / ("ray-head.log" if attempt == 1 else f"ray-head.{attempt}.log")
            try:
                self._start_once(log_path, timeout)
                return
            except _PortTaken as exc:
                self.stop(grace=0.0)  # what is left of the failed start: its session, temp dir, RAY_ADDRESS
                if attempt == attempts:
                    raise RuntimeError(
                        f"`ray start --head` found a chosen port taken {attempts} times in a row; "
                        f"the last time: {exc} (see {log_path})"
                    ) from None
                print(
                    f"      a port chosen for the Ray head was taken before it bound it ({exc}); "
                    "starting it again on other ports",
                    file=sys.stderr,
                    flush=True,
                )
                self.choose_ports()

    def _start_once(self, log_path: Path, timeout: float) -> None:
        import ray

        apply_ray_env()
        # Ray's unix socket paths must stay short: /tmp/rayXXXX rather than a deep output directory.
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        os.environ["RAY_ADDRESS"] = self.address
        cmd = self._command()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PATH=f"{Path(cmd[0]).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        # Connect only once `ray start` says the head is up: a driver connected to a GCS whose `ray start` then
        # fails (a port taken) waits a minute or more for that GCS to come back.
        while not _says_started(log_path):
            if self.proc.poll() is not None:
                taken = _port_taken_line(log_path)
                if taken:
                    raise _PortTaken(taken)
                raise RuntimeError(f"`ray start --head` exited with {self.proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                break  # try to connect anyway: the error below says what is wrong
            time.sleep(0.2)  # polling the log: `ray start --block` signals nothing else when it is up
        while True:
            if self.proc.poll() is not None:  # gone: connecting to its address would retry for minutes
                raise RuntimeError(
                    f"`ray start --head` exited with {self.proc.returncode} before this process connected to "
                    f"{self.address}; see {log_path}"
                )
            try:
                ray.init(address=self.address, logging_level="WARNING", log_to_driver=True)
                return
            except (ConnectionError, TimeoutError, RuntimeError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the local Ray head at {self.address} did not come up in {timeout:.0f}s: {exc} "
                        f"(see {log_path})"
                    ) from exc
                time.sleep(1.0)  # the head is still starting: poll again

    def stop(self, grace: float = 2.0) -> None:
        """Disconnect, SIGTERM `ray start --block`, and SIGKILL what is left of its session after `grace` s.

        Callers stop the head only once everything they need is on disk, so nothing is worth waiting for: an idle
        head is gone about 2-3 s after SIGTERM, while waiting for every process of a busy session took ~30 s.
        """
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        if os.environ.get("RAY_ADDRESS") == self.address:
            del os.environ["RAY_ADDRESS"]
        if self.proc is None:
            return
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self._wait_gone(sid, grace)
        for pid in _session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._wait_gone(sid, 10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    @staticmethod
    def _wait_gone(sid: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and _session_pids(sid):
            time.sleep(0.05)  # polling /proc: there is no event for "a process of this session exited"


def autoscaler_max_resources() -> dict:
    """{resource: the most the connected cluster's autoscaler may provide} from its cluster config (Ray's own
    reading, as Ray Train takes it); {} without one (a local instance, a fixed `ray start` cluster)."""
    try:
        from ray._private.state import state

        return dict(state.get_max_resources_from_cluster_config() or {})
    except Exception:  # noqa: BLE001 - not connected, or no autoscaler config
        return {}
