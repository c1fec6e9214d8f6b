"""The local Ray that jobs start (`init_ray` without a cluster address)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# In a fresh interpreter: this test's Ray must be the one init_ray starts, not one an earlier test left up.
_SCRIPT = """
import json, ray
from ray.util.state import list_actors
from pipelines.infra.ray_runtime import init_ray

started = init_ray(num_cpus=1)

@ray.remote(num_cpus=0)
class Probe:
    def ping(self):
        return "pong"

@ray.remote(num_cpus=0)
def alive_actors(gcs):  # inside the cluster, where Ray Train's placement-group cleaner asks
    # This cluster's address: the test must not pick up another Ray on the machine.
    return [a.class_name for a in list_actors(address=gcs, filters=[("state", "=", "ALIVE")], timeout=30)]

probe = Probe.remote()
ray.get(probe.ping.remote())
alive = ray.get(alive_actors.remote(ray.get_runtime_context().gcs_address))
print(json.dumps({"started": started, "alive": alive}))
ray.shutdown()
"""


def _run_script(script: str, env: dict | None = None) -> tuple[dict, str]:
    """Run `script` in a fresh interpreter, which must exit 0: (the JSON of its last stdout line, its stderr)."""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.slow
def test_local_ray_serves_the_state_api():
    """Ray Train's placement-group cleaner, `ray list actors` and ray.util.state read the State API, which the
    dashboard serves: a local Ray started by init_ray answers it."""
    res, _ = _run_script(_SCRIPT)
    assert res["started"] is True
    assert "Probe" in res["alive"], res


@pytest.mark.parametrize("ephemeral", ["32768\t60999\n", "20500\t60999\n"])
def test_free_ports_are_bindable_distinct_and_outside_the_kernels_ephemeral_range(ephemeral, tmp_path, monkeypatch):
    """A port the kernel hands out (bind to port 0, outgoing connections) can be taken again before a server binds
    it; free_port picks from the quiet range between Ray's worker ports and the kernel's ephemeral range (here a
    kernel range read from a file: Linux's default, then one that leaves no room: any free port then)."""
    from pipelines.infra import ray_runtime
    from pipelines.infra.ray_runtime import _bindable, _quiet_port_range, free_ports

    (tmp_path / "range").write_text(ephemeral)
    monkeypatch.setattr(ray_runtime, "_EPHEMERAL_RANGE", tmp_path / "range")
    chosen = free_ports(20)
    assert len(set(chosen)) == len(chosen)
    assert all(_bindable(p) for p in chosen)
    quiet = _quiet_port_range()
    if ephemeral.startswith("32768"):
        assert quiet == range(20000, 32768) and all(p in quiet for p in chosen), (chosen, quiet)
    else:
        assert quiet is None


# The head's dashboard port is taken between choosing it and `ray start` binding it.
_TAKEN_PORT_SCRIPT = """
import json, socket, sys, tempfile
from pathlib import Path
import ray
from pipelines.infra.ray_runtime import LocalRayHead

logs = Path(tempfile.mkdtemp())
head = LocalRayHead(logs, num_cpus=1)
first = head.dashboard_port
thief = socket.socket()
thief.bind(("127.0.0.1", first))
thief.listen()
try:
    head.start(timeout=240)
    res = {"first": first, "now": head.dashboard_port, "cpus": ray.cluster_resources().get("CPU"),
           "logs": sorted(p.name for p in logs.iterdir()),
           "first_log": (logs / "ray-head.log").read_text(errors="replace")}
finally:
    head.stop()
print(json.dumps(res))
"""


@pytest.mark.slow
def test_the_local_head_starts_again_on_other_ports_when_a_chosen_port_was_taken():
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    env.pop("RAY_ADDRESS", None)
    res, stderr = _run_script(_TAKEN_PORT_SCRIPT, env)
    assert res["cpus"] == 1.0
    assert res["now"] != res["first"]
    assert res["logs"] == ["ray-head.2.log", "ray-head.log"]  # the failed start's log is kept
    assert "already occupied" in res["first_log"] or "already in use" in res["first_log"].lower()
    assert "starting it again on other ports" in stderr


# `ray start` says the head is up and then exits: the start names its exit code at once.
_EXITED_SCRIPT = """
import json, tempfile
from pathlib import Path
from pipelines.infra.ray_runtime import LocalRayHead

class Gone(LocalRayHead):
    def _command(self):
        return ["sh", "-c", "echo 'Ray runtime started.'; exit 3"]

head = Gone(Path(tempfile.mkdtemp()), num_cpus=1)
try:
    head.start(timeout=60)
    res = {"error": None}
except RuntimeError as exc:
    res = {"error": str(exc)}
finally:
    head.stop(grace=0.0)
print(json.dumps(res))
"""


def test_a_head_that_exits_after_saying_it_is_up_is_named_with_its_exit_code():
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    env.pop("RAY_ADDRESS", None)
    res, _ = _run_script(_EXITED_SCRIPT, env)
    assert res["error"] and "exited with 3" in res["error"], res


def test_a_job_servers_http_ray_address_is_passed_over_for_a_local_ray(monkeypatch, capsys):
    """The docs export RAY_ADDRESS=http://...:8265 for `ditscale submit`; ray.init refused it ("Invalid Ray
    address") in every later local command."""
    from pipelines.infra.ray_runtime import cluster_address

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert cluster_address() is None
    assert "is a job server's address" in capsys.readouterr().err
    assert cluster_address("ray://h:10001") == "ray://h:10001"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address() == "10.0.0.1:6379"
