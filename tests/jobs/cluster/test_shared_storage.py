"""Local storage on a multi-node cluster (ray.cluster_utils.Cluster, 2 nodes): a local checkpoint.storage or sweep
output is refused with an error naming the path, the node count and the override, before anything is written;
s3:// and an explicit run.shared_filesystem=true pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ditcore.config import ConfigError
from jobs.cluster.shared_storage import alive_nodes, check_shared_storage
from jobs.train.driver import run_training
from tests.jobs._train_helpers import budget_override, make_latent_dataset, train_config
from tests.jobs.test_distill import make_teacher

pytestmark = pytest.mark.slow  # a 2-node Ray cluster


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_local_path_refused_on_two_nodes_unless_shared(two_nodes, tmp_path):
    assert alive_nodes() == 2
    local = str(tmp_path / "runs")
    with pytest.raises(ConfigError) as err:
        check_shared_storage(local, key="checkpoint.storage", override="run.shared_filesystem", shared_filesystem=False)
    msg = str(err.value)
    assert f"checkpoint.storage={local!r}" in msg and "2 nodes" in msg and "run.shared_filesystem=true" in msg
    check_shared_storage(local, key="checkpoint.storage", override="run.shared_filesystem", shared_filesystem=True)
    check_shared_storage("s3://bucket/runs", key="checkpoint.storage", override="x", shared_filesystem=False)


def test_training_with_local_storage_is_refused_before_anything_is_written(two_nodes, tmp_path):
    data = make_latent_dataset(tmp_path / "lat", n=8, num_classes=None, text=(8, 16, 16))
    cfg = train_config(data, tmp_path, budget_override(train_config(data, tmp_path), 2))
    with pytest.raises(ConfigError, match=r"checkpoint.storage=.*2 nodes.*run.shared_filesystem=true"):
        run_training(cfg)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_sweep_with_local_output_is_refused(two_nodes, tmp_path, capsys):
    from jobs.cli.sweep import main

    data = make_latent_dataset(tmp_path / "lat", n=8, num_classes=None, text=(8, 16, 16))
    cfg = {
        "name": "t",
        "output": str(tmp_path / "sweeps"),
        "base": {"model": {"preset": "MMDiT-T"}, "data": {"manifest": data, "batch_size": 8, "val_samples": 0}},
        "models": ["MMDiT-T"],
        "budgets": [1.0e13],
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "shared-storage"},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr()
    text = err.out + err.err
    assert f"output={str(tmp_path / 'sweeps')!r}" in text and "base.run.shared_filesystem=true" in text, text
    assert not list((tmp_path / "sweeps").rglob("done.json"))  # no trial ran


def test_ems_tasks_refuse_a_local_checkpoint_unless_shared(two_nodes, tmp_path, capsys):
    """The EMS tasks load the checkpoint and its latents on whichever node they land: a local path is refused
    before any task runs (the CLI exits 2 naming the path and --shared-filesystem, nothing written beside the
    checkpoint); with the flag the tasks run on the two nodes and the EMS come back."""
    from jobs.cli.ems import main
    from jobs.ems.compute import EMSSettings, compute_ems
    from tests.jobs._train_helpers import make_eval_dataset, perturbed_model, save_model_checkpoint

    data, _ = make_eval_dataset(tmp_path, fid=False, n=8, num_classes=4)
    model = perturbed_model("DiT-T/2", num_classes=4, input_size=8)
    ckpt = save_model_checkpoint(tmp_path / "ck", model, {"manifest": data}, state={"step": 1})
    small = dict(num_samples=8, batch_size=8, num_nodes=8, num_tasks=2)
    with pytest.raises(ConfigError) as err:
        compute_ems(ckpt, EMSSettings(**small))
    msg = str(err.value)
    assert f"checkpoint={ckpt!r}" in msg and "2 nodes" in msg and "the EMS tasks" in msg, msg
    assert "pass --shared-filesystem" in msg, msg
    args = [ckpt, "--num-samples", "8", "--batch-size", "8", "--num-nodes", "8", "--num-tasks", "2"]
    assert main(args) == 2
    assert "pass --shared-filesystem" in capsys.readouterr().err
    assert not list((tmp_path / "ck").glob("ems*"))
    ems, info = compute_ems(ckpt, EMSSettings(**small), shared_filesystem=True)
    assert int(ems.lambdas.numel()) == 8 and info["num_tasks"] == 2


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict:
    return make_teacher(tmp_path_factory.mktemp("distill"))


def test_distillation_refuses_a_local_teacher_or_storage_unless_shared(two_nodes, teacher, s3_bucket):
    """Every distillation worker loads the teacher itself: a local teacher (or student storage) is refused in
    distill's own words, `shared_filesystem=true` (a key distill now has) lets it through."""
    import dataclasses

    from jobs.distill.config import DistillConfig
    from jobs.distill.driver import run_distill

    base = DistillConfig(teacher=teacher["ckpt"], tracking_uri=teacher["uri"], batch_size=8, val_samples=4, steps=1)
    with pytest.raises(ConfigError, match=r"^storage='.*/distill' is a local path .* set shared_filesystem=true"):
        run_distill(base)
    with pytest.raises(ConfigError, match=r"^teacher='.*' is a local path .*2 nodes.* set shared_filesystem=true"):
        run_distill(dataclasses.replace(base, storage=f"{s3_bucket}/distill"))
    assert not list(Path(teacher["ckpt"]).parents[2].rglob("distill.json"))  # refused before anything was written
