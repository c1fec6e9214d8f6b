"""Promotion: the sweep's best checkpoint becomes an MLflow registered model version with alias 'champion'."""

from __future__ import annotations

import math
import os
from typing import Any

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
) -> dict:
    """Register the best point's checkpoint (reusing a version of the same checkpoint) and point the alias at it."""
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
    try:
        mv, created = register_checkpoint(
            mlflow_client,
            source,
            model_name=model_name,
            alias=alias,
            run_id=best.run_id,
            tags=tags,
            description=f"best {metric} of the sweep: {value}",
        )
    except RegistryError as e:
        raise PromoteError(str(e)) from e
    return {
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
    }
