"""The scaling-point record: one (model, budget) measurement of a sweep, as training writes it and fit, promote,
report and the quickstart read it (the `points.json` artifact of each trial's MLflow run)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from ditcore.config import from_dict


@dataclass
class ScalingPoint:
    """A checkpoint at a budget point with what it cost and how good it is."""

    model: str  # display name (preset or arch/depth/width)
    params: int
    budget_flops: float  # the budget this point stands for
    flops: float  # training FLOPs consumed at the checkpoint (3 x forward, multiply-add = 2 FLOPs)
    step: int
    checkpoint: str  # checkpoint directory URI
    images_seen: int = 0
    val_loss: Optional[float] = None
    fid: Optional[float] = None
    fid_network: Optional[str] = None  # the feature network FID was computed with
    fid_samples: Optional[int] = None
    fid_feature_dim: Optional[int] = None  # dimension of fid_network's features (FID wants samples >= it)
    fid_se: Optional[float] = None  # sampling sd of fid (bootstrap over the generated samples)
    fid_ci: Optional[list[float]] = None  # its bootstrap interval [lo, hi]
    eval_key: Optional[str] = None  # hash of every evaluation setting that changes fid (jobs.evaluation.fid)
    attr_acc: Optional[float] = None  # caption-attribute accuracy of the samples (built-in data)
    class_acc: Optional[float] = None  # class accuracy of the samples under the data set's classifier
    arm: Optional[str] = None  # architecture arm of a comparison sweep (e.g. "dit", "unet")
    run: Optional[str] = None  # training run name
    mode: Optional[str] = None  # sweep budget mode (separate | wsd)
    run_id: Optional[str] = None  # MLflow trial run (set when read back from the record)
    trial_id: Optional[str] = None
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ScalingPoint":
        """A point from its JSON record (unknown keys are an error naming them)."""
        return from_dict(cls, data, where="point")


def to_dicts(points: list[ScalingPoint]) -> list[dict[str, Any]]:
    """The plain records the pure-numpy fits (ditcore.scaling) take."""
    return [p.to_dict() for p in points]


def unique_points(points: list[ScalingPoint]) -> list[ScalingPoint]:
    """One point per (trial, training run, budget, step): where a trial was recorded twice (a driver restarted
    through a tracking outage by an older version), the newest record wins, so fits never count a point twice.

    The points come back ordered by what they measure (arm, model, size, budget, compute, step), not by the
    MLflow run ids they were listed by, so bootstraps over them give the same report for the same results."""
    seen: dict[tuple, ScalingPoint] = {}
    for p in points:  # oldest run first: later records overwrite
        seen[(p.trial_id or p.run_id, p.run, p.budget_flops, p.step)] = p
    return sorted(
        seen.values(), key=lambda p: (p.arm or "", p.model, p.params, p.budget_flops, p.flops, p.step, p.run or "")
    )


def read_points(
    mlflow_client: Any, *, experiment: str | None = None, parent_run_id: str | None = None
) -> tuple[Any, list[ScalingPoint]]:
    """(parent run, typed points of all its trials, one per (trial, budget)) of a sweep's MLflow record."""
    from ditcore.config import ConfigError
    from pipelines.infra.tracking import POINTS_ARTIFACT, ExperimentRecordError, sweep_points

    parent, raw = sweep_points(mlflow_client, experiment=experiment, parent_run_id=parent_run_id)
    typed = []
    for p in raw:
        try:
            typed.append(ScalingPoint.from_dict(p))
        except ConfigError as e:  # a record written by another version, or edited by hand
            raise ExperimentRecordError(f"run {p.get('run_id')}: artifact {POINTS_ARTIFACT}: {e}") from e
    return parent, unique_points(typed)
