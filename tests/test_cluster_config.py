"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own JSON schema and checks)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    """The parsed cluster.yaml."""
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_validates_against_ray_schema(cluster):
    """Ray's validate_config (jsonschema on ray-schema.json + head/min_workers checks) accepts the file."""
    from ray.autoscaler._private.util import validate_config

    validate_config(cluster)


def test_validates_after_ray_fills_defaults(cluster):
    """What `ray up` really checks: the config merged with the AWS defaults, docker config normalised."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["docker"]["image"] == cluster["docker"]["image"]


def test_schema_check_is_real(cluster):
    """The schema really rejects a misspelt key, so the test above is not vacuous."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)


def test_node_types_cover_training_serving_and_precompute(cluster):
    """AWS, a head node plus an autoscaled GPU worker type and a CPU worker type."""
    assert cluster["provider"]["type"] == "aws"
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    cpu = [n for n, t in types.items() if n != cluster["head_node_type"] and t["resources"].get("GPU", 0) == 0]
    assert gpu and cpu
    for node_type in gpu:
        assert node_type["min_workers"] == 0 < node_type["max_workers"]  # autoscaled from zero
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]


def test_cuda_image_env_and_project_install(cluster):
    """A CUDA container image, the tracking/storage/auth env, and setup that installs the project."""
    docker = cluster["docker"]
    assert "gpu" in docker["image"] or "cuda" in docker["image"]
    run_options = " ".join(docker["run_options"])
    for var in ("MLFLOW_TRACKING_URI=", "AWS_REGION=", "RAY_AUTH_MODE=token", "RAY_USAGE_STATS_ENABLED=0"):
        assert var in run_options, var
    # every variable the image sets is one the code or its libraries read (DITSCALE_STORAGE was read by nothing)
    assert "DITSCALE_STORAGE" not in run_options
    # both worker types write to the bucket (checkpoints, precompute shards): each is offered the instance profile
    text = (REPO / "cluster.yaml").read_text()
    assert text.count("# IamInstanceProfile:") == 2
    assert any("pip install" in c and "ditscale" in c for c in cluster["setup_commands"])
    assert cluster["file_mounts"]["~/ditscale"] == "."
    for excluded in ("/data/", "/outputs/", "/mlruns/"):
        assert excluded in cluster["rsync_exclude"]
    # rsync matches an unanchored folder pattern at any depth: "data/" would drop the package ditcore/data.
    packages = {p.name for p in REPO.glob("*/*/") if p.parent.name in ("ditcore", "pipelines", "jobs", "serve")}
    for pattern in cluster["rsync_exclude"]:
        if not pattern.startswith(("/", "**/")):
            assert pattern.rstrip("/") not in packages, pattern
    assert any("ditcore.data.builtin" in c for c in cluster["setup_commands"])
