"""The local Ray that jobs start (`init_ray` without a cluster address)."""

from __future__ import annotations

import json
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


@pytest.mark.slow
def test_local_ray_serves_the_state_api():
    """Ray Train's placement-group cleaner, `ray list actors` and ray.util.state read the State API, which the
    dashboard serves: a local Ray started by init_ray answers it."""
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["started"] is True
    assert "Probe" in res["alive"], res
