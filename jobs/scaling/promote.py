"""Promotion: the sweep's best checkpoint becomes an MLflow registered model version with alias 'champion'."""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

from ditcore.scaling.frontier import FitError, check_metric
from jobs.scaling.points import ScalingPoint
from pipelines.infra.tracking import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, RegistryError


class PromoteError(ValueError):
    """No promotable point, or the registry refused the checkpoint source."""


def _value(p: ScalingPoint, key: str) -> float | None:
    try:
        v = float(getattr(p, key))
    except (TypeError, ValueError, AttributeError):
        return None
    return v if math.isfinite(v) else None


def select_best(points: list[ScalingPoint], metric: str = "fid") -> ScalingPoint:
    """Point with the lowest `metric` that has a checkpoint; ties -> less compute, then smaller model."""
    try:
        check_metric(metric)
    except FitError as e:
        raise PromoteError(str(e)) from None
    cands = [p for p in points if _value(p, metric) is not None and p.checkpoint]
    if not cands:
        raise PromoteError(f"no point has both a finite {metric!r} and a 'checkpoint' ({len(points)} points)")
    return min(cands, key=lambda p: (_value(p, metric), p.flops or p.budget_flops or math.inf, p.params or math.inf))


def checkpoint_source(checkpoint: str) -> str:
    """Registry source of a checkpoint: s3:// and other URIs unchanged, local paths absolute (must exist)."""
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return checkpoint
    path = os.path.abspath(os.path.expanduser(checkpoint.removeprefix("file://")))
    if not os.path.isdir(path):
        raise PromoteError(f"checkpoint directory {path!r} of the best point does not exist")
    return path


def promote(
    mlflow_client: Any,
    points: list[ScalingPoint],
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    metric: str = "fid",
    alias: str = CHAMPION_ALIAS,
    extra_tags: dict[str, Any] | None = None,
    pyfunc: bool = True,
    sample_grid: bool = True,
) -> dict:
    """Register the best point (reusing a version of the same checkpoint) and point the alias at it.

    `pyfunc` (default): the version is an MLflow pyfunc model carrying the checkpoint and what it needs
    (pipelines/export/pyfunc.py), so `mlflow.pyfunc.load_model("models:/<name>@<alias>")` works; its tag
    `checkpoint` still names the raw safetensors directory that Ray Serve loads. Otherwise the version is the bare
    checkpoint directory. `sample_grid` (with `pyfunc`, which proves the checkpoint loads): a grid of the champion's
    samples is logged to its run (samples/champion.png)."""
    from pipelines.infra.tracking import register_checkpoint

    best = select_best(points, metric)
    source = checkpoint_source(best.checkpoint)
    value = getattr(best, metric)
    tags = {
        metric: value,
        "train_flops": best.flops,
        "model": best.model,
        "params": best.params,
        "budget_flops": best.budget_flops,
        "step": best.step,
        "val_loss": best.val_loss,
        "fid_network": best.fid_network,
        "fid_samples": best.fid_samples,
        **(extra_tags or {}),
    }
    description = f"best {metric} of the sweep: {value}"
    check_loads(source)  # before anything is registered: the alias must never move to a model that cannot load
    previous = alias_version(mlflow_client, model_name, alias)
    try:
        if pyfunc:
            mv, created = register_pyfunc(mlflow_client, source, best.run_id, model_name, alias, tags, description)
        else:
            mv, created = register_checkpoint(
                mlflow_client,
                source,
                model_name=model_name,
                alias=alias,
                run_id=best.run_id,
                tags=tags,
                description=description,
            )
    except RegistryError as e:
        raise PromoteError(str(e)) from e
    grid, grid_error = None, None
    if pyfunc and sample_grid and best.run_id:
        try:
            grid = champion_grid(mlflow_client, best.run_id, source)
        except Exception as e:  # noqa: BLE001 - the version and alias stand; the picture is an extra
            grid_error = f"{type(e).__name__}: {e}"
    return {
        "sample_grid_error": grid_error,
        "pyfunc": bool(pyfunc),
        "model_uri": f"models:/{model_name}@{alias}",
        "sample_grid": grid,
        "model_name": model_name,
        "version": str(mv.version),
        "alias": alias,
        "created": created,
        "checkpoint": source,
        "run_id": best.run_id,
        metric: value,
        "train_flops": best.flops,
        "model": best.model,
        "point": best.to_dict(),
        # The version the alias pointed at before (None: none, or this one): {version, checkpoint, <metric>, ...}
        "replaced": previous if previous and previous["version"] != str(mv.version) else None,
    }


def check_loads(source: str) -> None:
    """PromoteError unless the checkpoint at `source` loads (its files at their recorded sizes, the weights it is
    served with, EMA when present, readable into the model its config.json names). A remote (s3://) checkpoint is
    downloaded into a temporary directory first (deleted after the check)."""
    from ditcore.checkpoint import CheckpointError, load_checkpoint
    from pipelines.infra import storage

    if "://" in source and not storage.is_s3(source):
        raise PromoteError(f"the best point's checkpoint {source!r}: only local paths and s3:// URIs can be read")
    with tempfile.TemporaryDirectory(prefix="ditscale-promote-") as tmp:
        local = source
        if storage.is_s3(source):
            try:
                local = storage.download_dir(source, os.path.join(tmp, "checkpoint"))
            except Exception as e:  # noqa: BLE001 - any storage error: the checkpoint cannot be read, say which
                raise PromoteError(f"the best point's checkpoint {source!r} cannot be read: {e}") from e
        try:
            load_checkpoint(local)
        except (CheckpointError, OSError, ValueError, RuntimeError, KeyError) as e:
            raise PromoteError(f"the best point's checkpoint {source!r} does not load: {e}") from e


def alias_version(mlflow_client: Any, model_name: str, alias: str) -> dict | None:
    """{version, checkpoint, experiment, fid_network, <tags>} of the version `model_name@alias` points at now, or
    None."""
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow_client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return {**(mv.tags or {}), "version": str(mv.version)}


def _pyfunc_versions(mlflow_client: Any, model_name: str, source: str) -> list:
    from mlflow.exceptions import MlflowException

    from pipelines.export.pyfunc import PYFUNC_FORMAT, PYFUNC_TAG

    try:
        versions = mlflow_client.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return []
    return [
        mv
        for mv in versions
        if (mv.tags or {}).get("checkpoint") == source and (mv.tags or {}).get(PYFUNC_TAG) == PYFUNC_FORMAT
    ]


def register_pyfunc(
    mlflow_client: Any,
    source: str,
    run_id: str | None,
    model_name: str,
    alias: str,
    tags: dict[str, Any],
    description: str,
) -> tuple[Any, bool]:
    """(model version, created): a pyfunc version of checkpoint `source` (reused when one exists), tagged with the
    checkpoint and `tags`, with `alias` pointing at it. PromoteError when the checkpoint cannot be packaged."""
    from ditcore.checkpoint import CheckpointError
    from pipelines.export.pyfunc import PYFUNC_FORMAT, PYFUNC_TAG, log_pyfunc_model
    from pipelines.latents.manifest import LatentDatasetError

    existing = _pyfunc_versions(mlflow_client, model_name, source)
    clean = {k: str(v) for k, v in {"checkpoint": source, PYFUNC_TAG: PYFUNC_FORMAT, **tags}.items() if v is not None}
    if existing:
        mv = max(existing, key=lambda v: int(v.version))
        for k, v in clean.items():  # a re-evaluated FID or another sweep's tags replace the stale ones
            mlflow_client.set_model_version_tag(model_name, mv.version, k, v)
        mlflow_client.update_model_version(model_name, mv.version, description=description)
    else:
        try:
            info = log_pyfunc_model(mlflow_client.tracking_uri, source, run_id=run_id, registered_model_name=model_name)
        except (CheckpointError, LatentDatasetError, FileNotFoundError, ValueError) as e:
            raise PromoteError(
                f"cannot package checkpoint {source!r} as an MLflow model: {e} "
                "(`ditscale promote --no-pyfunc` registers the bare checkpoint directory)"
            ) from e
        version = str(info.registered_model_version)
        for k, v in clean.items():
            mlflow_client.set_model_version_tag(model_name, version, k, v)
        mlflow_client.update_model_version(model_name, version, description=description)
        mv = mlflow_client.get_model_version(model_name, version)
    mlflow_client.set_registered_model_alias(model_name, alias, mv.version)
    return mv, not existing


def champion_grid(mlflow_client: Any, run_id: str, checkpoint: str) -> str | None:
    """Log a grid of the champion's samples (its run's evaluation settings) to run `run_id` as
    samples/champion.png, once; returns the artifact path (None when it was already there)."""
    from pipelines.infra import storage
    from pipelines.infra.tracking import SAMPLES_DIR, log_checkpoint_grid

    ev = (storage.checkpoint_config(checkpoint).get("train") or {}).get("eval") or {}
    kwargs = {k: ev[k] for k in ("sampler", "steps", "guidance", "seed") if ev.get(k) is not None}
    return log_checkpoint_grid(mlflow_client, run_id, checkpoint, f"{SAMPLES_DIR}/champion.png", **kwargs)
