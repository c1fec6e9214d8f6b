"""DistillConfig: which teacher, which guidance scales, how long; everything else comes from the teacher's run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DistillConfig:
    """A guidance-distillation run. The data set, objective and model come from the teacher's config.json."""

    teacher: str = ""  # teacher checkpoint directory (local or s3://), e.g. runs/<run>/checkpoints/step_X
    w_min: float = 1.0  # guidance scales drawn uniformly from [w_min, w_max] per sample
    w_max: float = 7.0
    steps: int = 500
    lr: float = 1e-4
    warmup_steps: int = 10
    ema_decay: float = 0.99
    batch_size: int = 64  # global batch
    val_samples: int = 64  # held-out rows for the distillation validation loss
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    bf16: bool = True  # GPU only
    seed: int = 0
    storage: Optional[str] = None  # default: <teacher run dir>/distill
    shared_filesystem: bool = False  # a local teacher / storage is mounted at the same path on every node
    name: Optional[str] = None  # run name; default <teacher run>-<teacher step dir>-distill-w<w_min>-<w_max>
    log_every: int = 10
    mlflow: bool = True  # nested under the teacher's MLflow run when its run directory records one
    tracking_uri: Optional[str] = None  # None: the teacher's, else $MLFLOW_TRACKING_URI / sqlite ./mlflow.db
