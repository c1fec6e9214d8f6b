"""Read side of the MLflow model registry: which checkpoint is the current 'champion'.

`ditscale promote` (jobs/promote.py) writes a registered-model version whose source is a checkpoint
directory and points the alias "champion" at it; serving resolves it here (serve must not import
jobs, so this lives in pipelines).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "ditscale"
CHAMPION_ALIAS = "champion"


class RegistryError(LookupError):
    """The registered model or its alias does not exist (or the registry cannot be read)."""


def _tracking_uri(uri: str | None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (as jobs.mlflow_utils resolves it)."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not os.path.isabs(path):
            return f"sqlite:///{Path(path).resolve()}"
    return uri


def _number(v: Any) -> Any:
    """Tag strings that hold numbers as float (tags are strings in MLflow)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def resolve_champion(model_name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None,
                     alias: str = CHAMPION_ALIAS) -> dict[str, Any]:
    """The version behind `model_name@alias`: {checkpoint, version, fid, train_flops, run_id, model_name, alias, source, tags, ...}.

    `checkpoint` is the checkpoint directory URI (local path or s3://); numeric tags (fid,
    train_flops, params, val_loss, budget_flops) come back as floats. RegistryError if missing.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = _tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        raise RegistryError(
            f"no registered model version {model_name!r}@{alias} at {uri!r} (run `ditscale promote` first): {e.message}"
        ) from e
    tags = dict(mv.tags or {})
    record: dict[str, Any] = {
        "model_name": model_name,
        "alias": alias,
        "version": str(mv.version),
        "checkpoint": tags.get("checkpoint") or mv.source,
        "source": mv.source,
        "run_id": mv.run_id,
        "tags": tags,
    }
    for key in ("fid", "train_flops", "params", "val_loss", "budget_flops", "step"):
        record[key] = _number(tags[key]) if key in tags else None
    for key in ("model", "experiment", "parent_run_id"):
        record[key] = tags.get(key)
    return record
