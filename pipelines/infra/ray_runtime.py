"""The environment a local Ray instance started by ditscale gets (its worker processes inherit it).

Offline model loading, no usage stats or MLflow telemetry, and Ray Data's per-execution INFO lines kept in the
session log instead of the console. Values already set by the user win. On a cluster, set the same variables
in the cluster's environment or the job's runtime_env.
"""
from __future__ import annotations

import os
from pathlib import Path

RAY_DATA_LOGGING_CONFIG = Path(__file__).with_name("ray_data_logging.yaml")

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING_CONFIG),
}


def apply_ray_env() -> None:
    """Set RAY_ENV in this process's environment (before ray.init / `ray start`) where not already set."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
