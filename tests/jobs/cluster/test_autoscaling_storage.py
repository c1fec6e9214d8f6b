"""A local output on an autoscaling cluster that has one node now (its own local Ray here, apart from the
2-node cluster of test_shared_storage.py): refused, since the work runs on nodes added later."""

from __future__ import annotations

import pytest

from ditcore.config import ConfigError
from jobs.cluster.shared_storage import alive_nodes, check_shared_storage

pytestmark = pytest.mark.slow  # starts a local Ray


def test_a_local_path_is_refused_on_an_autoscaling_cluster_that_has_one_node_now(tmp_path, monkeypatch):
    """cluster.yaml's head has no CPUs and every worker group min_workers 0: a submitted sweep saw 1 node, took a
    local output, and its trials ran on nodes added later, each writing to its own disk. Ray's reading of the
    autoscaler config (what Ray Train also takes) is faked here: a local instance has none."""
    import ray
    from ray._private.state import state

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        assert alive_nodes() == 1
        local = str(tmp_path / "out")
        check_shared_storage(local, key="output", override="base.run.shared_filesystem", shared_filesystem=False)
        monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 384, "GPU": 32})
        with pytest.raises(ConfigError, match=r"output='.*' is a local path but the Ray cluster autoscales"):
            check_shared_storage(local, key="output", override="base.run.shared_filesystem", shared_filesystem=False)
        check_shared_storage(local, key="output", override="base.run.shared_filesystem", shared_filesystem=True)
    finally:
        ray.shutdown()
