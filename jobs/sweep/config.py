"""Typed configuration of a scaling sweep (`ditscale sweep`): models x budgets x hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


@dataclass
class SweepMlflow:
    """Where the sweep is recorded: one experiment, a parent run, a child run per trial."""

    tracking_uri: Optional[str] = None
    experiment: str = "ditscale-sweep"


@dataclass
class SweepConfig:
    """A scaling grid: models x budgets x optional hyper-parameters over a shared base TrainConfig."""

    name: str = "sweep"  # sweep directory name under `output`; also the default MLflow parent run name
    output: str = "outputs/sweeps"  # local dir or s3:// prefix; checkpoints go to <output>/<name>/runs/<trial>/<run>
    base_config: Optional[str] = None  # a TrainConfig YAML the `base` mapping is applied on top of
    base: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys shared by every trial
    models: list[Any] = field(default_factory=list)  # preset names, or mappings of model fields (depth, ...)
    arms: dict[str, list[Any]] = field(default_factory=dict)  # architecture arms: name -> models (instead of models)
    budgets: list[float] = field(default_factory=list)  # training FLOPs per point
    hparams: dict[str, list[Any]] = field(default_factory=dict)  # dotted TrainConfig key -> values (grid)
    mode: Literal["separate", "wsd"] = "separate"
    # 0: as many as the cluster fits (trial_cpus + workers x cpus_per_worker per trial; one GPU per worker)
    max_concurrent: int = 0
    trial_cpus: float = 0.1  # CPU of the trial driver itself (fractional so it never blocks its own workers)
    num_cpus: Optional[int] = None  # local ray.init(num_cpus=...) when no cluster address is set
    allow_failures: bool = False  # a failed trial makes the sweep exit non-zero unless this is true
    mlflow: SweepMlflow = field(default_factory=SweepMlflow)
