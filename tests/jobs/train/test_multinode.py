"""Training placed across a simulated multi-node cluster (ray.cluster_utils.Cluster): 2 nodes x 2 CPUs and
2 workers x 2 CPUs, so DDP must span both nodes; each worker records its node id next to the checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.train.driver import run_training
from tests.jobs._train_helpers import budget_override, make_latent_dataset, train_config


@pytest.mark.slow
def test_ddp_across_two_nodes(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    data = make_latent_dataset(tmp_path / "lat", n=16, num_classes=None, text=(8, 16, 16))
    overrides = [
        "mlflow.enabled=false",
        "run.num_workers=2",
        "run.cpus_per_worker=2",
        "run.name=multinode",
        "run.shared_filesystem=true",  # both simulated nodes are this machine: the local path is shared
    ]
    steps = budget_override(train_config(data, tmp_path, *overrides, tracking=False), 3)
    cfg = train_config(data, tmp_path, *overrides, steps, tracking=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        out = run_training(cfg)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert out["status"] == "finished" and out["steps"] == 3
    recs = [json.loads(p.read_text()) for p in sorted((Path(out["run_dir"]) / "workers").glob("rank*.json"))]
    assert sorted(r["rank"] for r in recs) == [0, 1]
    assert len({r["node_id"] for r in recs}) == 2, recs  # one worker per node
    assert (Path(out["run_dir"]) / "checkpoints" / "step_00000003" / "checkpoint.json").is_file()
