"""Typed configuration of one training run (`ditscale train`): model, objective, data, optimiser, budget, eval,
checkpoints, execution (Ray resources), MLflow and debug switches, composed from the components' own dataclasses.

A TrainConfig is built once from YAML + overrides (pipelines.infra.config_files.load_config), checked once
(jobs.train.plan.resolve_run) and then travels as itself: sweep -> trial -> Ray Train worker.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ditcore.config import ConfigError, to_dict
from ditcore.objectives import ObjectiveConfig


@dataclass
class ModelSpec:
    """Which model: a named preset (ditcore.models.PRESETS) plus field overrides, or a full config dict."""

    preset: Optional[str] = "MMDiT-T"  # None: `overrides` is a complete config dict with "arch"
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 2, hidden_size: 128, num_heads: 2}
    # Fill data-derived fields (input_size, in_channels, text_dim, pooled_dim, max_text_len, num_classes) from the
    # dataset manifest unless given in `overrides`; explicit values that disagree with the data are errors.
    adapt_to_data: bool = True
    name: Optional[str] = None  # display name in MLflow; default: the preset or "<arch>-d<depth>-w<hidden>"


@dataclass
class DataConfig:
    """The latent dataset and how batches are drawn from it."""

    manifest: str = ""  # latent dataset directory (local or s3://) holding manifest.json
    batch_size: int = 32  # GLOBAL batch (split evenly over workers)
    cond_dropout: Optional[float] = None  # classifier-free-guidance dropout; None: objective.cond_dropout
    # Per-encoder dropout of a multi-encoder text set (SD3): {encoder name: p}, each part -> its null embedding.
    text_dropout: dict[str, float] = field(default_factory=dict)
    val_samples: int = 64  # rows held out (first rows of the set) for the deterministic validation loss
    # Probability of training on an image's horizontal mirror (DiT's ImageNet augmentation). Set 0 when conditions
    # name left and right, as the built-in captions do: a mirrored "at the top left" image is drawn at the top right.
    flip: float = 0.5
    # 0 disables shuffling; else the driver loader shuffles the whole set each epoch and the streaming loader keeps a
    # local shuffle buffer of this many rows per worker
    shuffle_buffer: int = 256
    # driver: read on the driver into the object store, batches drawn in each worker (sets < 512 MiB under auto);
    # ray: a streaming Ray Dataset split over the workers
    loader: Literal["auto", "driver", "ray"] = "auto"
    materialize: bool = True  # streaming reader: read once into the object store instead of per epoch


@dataclass
class OptimConfig:
    """AdamW with linear warmup and a constant / cosine / warmup-stable-decay schedule, clipping and EMA."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 10
    schedule: Literal["constant", "cosine", "wsd"] = "constant"
    decay_fraction: float = 0.2  # wsd: the last fraction of the steps (>= 1) decays linearly towards min_lr_ratio
    min_lr_ratio: float = 0.0  # cosine / wsd floor (approached, not reached: the last step's factor is above it)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.999
    mup: bool = False  # muP parameter groups (sets the model's `mup` flag; lr multipliers from param_groups)


@dataclass
class EvalConfig:
    """FID evaluation of the checkpoints at the budget points (run after training, on Ray actors)."""

    num_samples: int = 0  # 0 disables FID
    sampler: str = "euler"
    steps: int = 10
    guidance: float = 1.0
    budgets: list[float] = field(default_factory=list)  # extra budget points (FLOPs) <= budget_flops; end always
    # Extra points at these fractions of budget_flops (learning-curve points, Kaplan et al. 2020 §6): they give
    # the compute frontier more than one point per budget, so small grids still support intervals and a held-out check.
    fractions: list[float] = field(default_factory=list)
    seed: int = 0
    num_actors: int = 1  # Ray actors sampling in parallel; 0 samples inside the trial process (tiny models)
    # num_actors 0: per point, also sample on the node's idle CPUs, reserved through Ray (jobs/evaluation/cpus.py)
    spare_cpus: bool = True
    num_gpus: Optional[float] = None  # GPUs per sampling actor; None: 1 when the Ray cluster has GPUs, else 0
    val_every: int = 0  # validation loss every N steps (0: only at checkpoints and the end)
    classifier: Optional[str] = None  # a classifier net dir (ditscale data classifier): class accuracy of samples


@dataclass
class CheckpointConfig:
    """Where and how often checkpoints are written (<storage>/<run name>/checkpoints/step_XXXXXXXX)."""

    storage: str = "runs"  # local directory or s3://bucket/prefix
    every_n_steps: int = 0  # 0: only at budget points and the end
    keep: int = 2  # periodic checkpoints kept (budget points are always kept)
    init_from: Optional[str] = None  # start from this checkpoint's full state when the run has none of its own
    # Model, EMA and optimizer saved with torch.distributed.checkpoint, one file per worker (no full gather; resumes
    # on any worker count); budget points and the end also get full model/EMA weights for evaluation and serving.
    sharded: bool = False


@dataclass
class FaultSpec:
    """A failure to inject once per run (tests of fault tolerance): at `step` on `rank`."""

    step: int = 0
    # exception / os._exit(1) / a hung worker (until killed) / a non-finite loss from `step` on / an infinite
    # gradient at `step`, its loss finite
    mode: Literal["raise", "exit", "hang", "nan", "inf_grad"] = "raise"
    rank: int = 0


@dataclass
class DebugConfig:
    """Switches for testing the system itself; never set in a real run."""

    inject_failure: Optional[FaultSpec] = None


@dataclass
class ExecutionConfig:
    """Ray resources and execution switches (the `run:` section)."""

    name: Optional[str] = None  # run name (storage dir + MLflow run name); default derived from the config hash
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    compile: bool = False  # torch.compile the model: forward and backward of every train step run compiled
    bf16: bool = True  # bf16 autocast (GPU only; CPU runs stay fp32)
    deterministic: bool = False  # bit-reproducible CPU mode: per-sample RNG keyed by sample id, ordered data
    seed: int = 0
    fsdp: bool = False  # FSDP2 (torch.distributed.fsdp.fully_shard) instead of DDP
    shared_filesystem: bool = False  # a local checkpoint.storage is mounted on every node (multi-node clusters)
    # Big-model levers (docs/train.md#big-models):
    fsdp_mixed_precision: Literal["none", "bf16"] = "none"  # FSDP2 MixedPrecisionPolicy: bf16 compute, fp32 grads
    activation_checkpointing: bool = False  # recompute each transformer block in backward (DiT, MM-DiT)
    grad_accum: int = 1  # micro-batches per optimizer step: the same update as the whole batch, less memory
    meta_init: bool = False  # FSDP2: ranks > 0 build the model on the meta device; rank 0's init is scattered
    max_failures: int = 1  # worker failures Ray Train recovers from (restart from the latest checkpoint)
    peak_flops: Optional[float] = None  # per-worker peak FLOP/s for MFU; None: table (GPU) or measured (CPU)
    num_threads: Optional[int] = None  # torch threads per worker; default int(cpus_per_worker) (>= 1)
    log_level: str = "INFO"  # Ray Train's own console logs (worker group start, each report); WARNING in sweeps


@dataclass
class MlflowConfig:
    """Experiment tracking."""

    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI or sqlite ./mlflow.db
    experiment: str = "ditscale-train"
    log_every: int = 10  # steps between metric logs (rank 0)
    enabled: bool = True


@dataclass
class TrainConfig:
    """One training run: a model trained to a FLOPs budget on a latent dataset."""

    model: ModelSpec = field(default_factory=ModelSpec)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget_flops: float = 1e12  # training FLOPs (3 x forward, multiply-add = 2 FLOPs)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: ExecutionConfig = field(default_factory=ExecutionConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


# The execution fields that change what a run computes (others only change where or how fast it runs).
_RUN_KEYS = ("num_workers", "deterministic", "seed", "fsdp", "grad_accum", "fsdp_mixed_precision")
_RUN_DEFAULTS = {"grad_accum": 1, "fsdp_mixed_precision": "none"}


def config_hash(cfg: TrainConfig) -> str:
    """Short stable hash of the config parts that define the run (not where it is stored or logged)."""
    d = to_dict(cfg)
    for volatile in ("mlflow", "checkpoint"):
        d.pop(volatile, None)
    # New levers enter the hash only when set, so the names of runs made before them stay the same.
    d["run"] = {k: v for k, v in d["run"].items() if k in _RUN_KEYS and _RUN_DEFAULTS.get(k, object()) != v}
    d["eval"] = {}
    if not d["data"].get("text_dropout"):
        d["data"].pop("text_dropout", None)
    if d["data"].get("flip") == 0.5:
        d["data"].pop("flip", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_name(cfg: TrainConfig) -> str:
    """The run's name: run.name, else "<model>-<hash>"."""
    if cfg.run.name:
        return cfg.run.name
    return f"{model_display_name(cfg.model).replace('/', '_')}-{config_hash(cfg)}"


def model_display_name(spec: ModelSpec) -> str:
    """Human name of a model spec (preset name, or arch/depth/width)."""
    if spec.name:
        return spec.name
    o = spec.overrides
    if spec.preset and not any(
        k in o for k in ("depth", "hidden_size", "num_heads", "patch_size", "num_res_blocks", "channel_mult")
    ):
        return spec.preset
    base = dict(o)
    if spec.preset:
        from ditcore.models import PRESETS, config_to_dict

        base = {**config_to_dict(PRESETS[spec.preset]), **o} if spec.preset in PRESETS else base
    if base.get("arch") == "unet":
        return f"UNet-w{base.get('hidden_size', '?')}-n{base.get('num_res_blocks', '?')}"
    arch = "MMDiT" if base.get("arch") == "mmdit" else "DiT"
    return f"{arch}-d{base.get('depth', '?')}-w{base.get('hidden_size', '?')}-p{base.get('patch_size', '?')}"


def lr_factor(step: int, total_steps: int, o: OptimConfig) -> float:
    """LR multiplier at `step` (0-based, the step about to be taken): warmup then constant / cosine / WSD."""
    warm = (step + 1) / o.warmup_steps if o.warmup_steps > 0 and step < o.warmup_steps else 1.0
    if o.schedule == "wsd":
        # A run shorter than its warmup still decays over its last steps: every WSD point is a decayed model.
        return min(warm, _wsd_factor(step, total_steps, o))
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return warm
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":
        # After a warmup (which ends at the peak) the d remaining steps take k/(d+1) of the way, k = 1..d (as WSD's
        # decay); without one the first step is the peak and step k takes k/d. Either way one step runs at the peak
        # and the last still moves the weights.
        d = max(1, total_steps - o.warmup_steps)
        progress = (step - o.warmup_steps + 1) / (d + 1) if o.warmup_steps > 0 else step / d
        progress = min(1.0, progress)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return _wsd_factor(step, total_steps, o)


def _wsd_factor(step: int, total_steps: int, o: OptimConfig) -> float:
    # WSD (Hägele et al. 2024): stable until the last `decay_fraction` of the steps, then linear decay.
    decay_steps = max(1, int(round(o.decay_fraction * total_steps)))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    # The decay's d steps go k/(d+1) of the way to the floor, k = 1..d: factor 1 - (1 - min_lr_ratio) k/(d+1). Every
    # step moves the weights (a last factor of 0 would spend a step's FLOPs on nothing, and a one-step decay would
    # leave the point undecayed); the floor is approached, not reached.
    progress = min(1.0, (step - decay_start + 1) / (decay_steps + 1))
    return 1.0 - (1.0 - o.min_lr_ratio) * progress


def wsd_decay_start(total_steps: int, o: OptimConfig) -> int:
    """First step of the WSD decay phase for a run of `total_steps` (the branch point of a WSD sweep)."""
    return total_steps - max(1, int(round(o.decay_fraction * total_steps)))


__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DebugConfig",
    "EvalConfig",
    "ExecutionConfig",
    "FaultSpec",
    "MlflowConfig",
    "ModelSpec",
    "OptimConfig",
    "TrainConfig",
    "config_hash",
    "lr_factor",
    "model_display_name",
    "run_name",
    "wsd_decay_start",
]
