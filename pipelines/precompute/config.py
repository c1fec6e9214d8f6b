"""Typed configuration of a precompute job (`ditscale precompute`): source, encoders, where and how wide to run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipelines.encoders.text import TextPart, TextSpec
from pipelines.sources import SourceConfig
from pipelines.validation import check_positive


@dataclass
class VAEConfig:
    """The image autoencoder: a diffusers AutoencoderKL directory (local / s3://) or hub id."""

    path: str = "outputs/vae"
    revision: str | None = None
    subfolder: str | None = None  # e.g. "vae" inside a full Stable Diffusion repo


@dataclass
class FIDConfig:
    """The FID feature network whose reference statistics are computed in the same pass."""

    feature_net: str = "outputs/feature_net"  # directory (model.safetensors + config.json), local or s3://


@dataclass
class ComputeConfig:
    """Where and how wide to run: Ray address, actor pool size, per-actor resources, batch size, precision."""

    ray_address: str | None = None  # None: RAY_ADDRESS or a local Ray started for this job
    num_cpus: int | None = None  # CPUs of a local Ray (ignored when connecting to a cluster)
    actors: int = 1  # encoder actor pool size
    batch_size: int = 32  # images per encoder call
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    decode_cpus: float = 1.0  # CPUs per read/decode task
    chunk_rows: int = 128  # rows per block between the stages: bounds the memory a shard's images take in flight
    device: str = "auto"  # auto: cuda when the actor has a GPU, else cpu
    dtype: str = "auto"  # auto: bfloat16 (or float16) on GPU, float32 on CPU; or float32/float16/bfloat16

    def __post_init__(self) -> None:
        check_positive(self, ("actors", "batch_size", "chunk_rows"), "compute.{name} must be >= 1, got {value}")
        # cpus_per_actor 0 is Ray's num_cpus=0 (common for GPU actors; the actor's torch then uses every CPU)
        for name, low in (("cpus_per_actor", None), ("decode_cpus", 0.0), ("gpus_per_actor", None)):
            v = getattr(self, name)
            ok = math.isfinite(v) and (v >= 0 if low is None else v > low)
            if not ok:
                raise ValueError(f"compute.{name} must be a finite number {'>= 0' if low is None else '> 0'}, got {v}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"compute.num_cpus must be >= 1 (or null: the machine's), got {self.num_cpus}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"compute.dtype must be auto/float32/float16/bfloat16, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"compute.device must be auto/cpu/cuda, got {self.device!r}")


@dataclass
class PrecomputeConfig:
    """A precompute job: source -> (VAE, text encoder, FID net) -> latent data set at `output`."""

    output: str = "outputs/latents/builtin"
    image_size: int = 32
    source: SourceConfig = field(default_factory=SourceConfig)
    # null: pixel space, no VAE: the rows hold the images themselves (C x S x S in [-1, 1]), for small images.
    vae: VAEConfig | None = field(default_factory=VAEConfig)
    # One encoder, or a list of encoders joined SD3 style (docs/precompute.md, "Several text encoders");
    # null: class-conditional data set, no text columns.
    text: TextSpec | list[TextPart] | None = field(default_factory=TextSpec)
    fid: FIDConfig | None = field(default_factory=FIDConfig)  # null: no FID reference statistics
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    overwrite: bool = False  # delete an existing output first (otherwise: resume it)
    progress: bool = True  # Ray Data progress bars
