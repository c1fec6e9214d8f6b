"""Dynamic batching of generation requests: the sampler deployment's run-time config, jobs, and grouping.

`@serve.batch` (serve/sampler.py) hands the sampler whatever requests arrived together; only requests that share
(steps, sampler, guidance) and steering can run as one batched sampler call, so a batch is split into such groups
here, and each group is cut so one forward pass holds at most `max_batch_images` images (a request for 16 images
counts 16, not 1). Every image owns its own seeds (pipelines.generation), so a request returns the same images alone
or batched, up to float rounding (a batched matmul can move a pixel by one level; docs/serve.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ditcore.config import ConfigError, from_dict
from ditcore.samplers import SAMPLERS
from pipelines.generation import DEFAULT_GUIDANCE
from pipelines.validation import check_positive
from serve.schema import MAX_GUIDANCE, MAX_STEPS


@dataclass
class SamplerUserConfig:
    """Run-time settings of the sampler deployment (Serve `user_config`, applied in `reconfigure`)."""

    default_steps: int = 20
    default_sampler: str = "dpmpp-2m"
    default_guidance: float = DEFAULT_GUIDANCE
    max_batch_size: int = 16  # requests @serve.batch collects
    max_batch_images: int = 64  # images in one forward batch
    batch_wait_timeout_s: float = 0.01

    def __post_init__(self) -> None:
        if self.default_sampler not in SAMPLERS:
            raise ConfigError(f"default_sampler: {self.default_sampler!r} is not one of {list(SAMPLERS)}")
        # The request limits (serve/schema.py): a default must be a value a request could ask for.
        if not 1 <= self.default_steps <= MAX_STEPS:
            raise ConfigError(f"default_steps: {self.default_steps} is outside [1, {MAX_STEPS}]")
        if not 0.0 <= self.default_guidance <= MAX_GUIDANCE:
            raise ConfigError(f"default_guidance: {self.default_guidance} is outside [0, {MAX_GUIDANCE:g}]")
        check_positive(self, ("max_batch_size", "max_batch_images"), "{name}: {value} must be >= 1", ConfigError)
        if not (math.isfinite(self.batch_wait_timeout_s) and self.batch_wait_timeout_s >= 0):
            # inf would hold a lone request until max_batch_size others arrive (or the request times out)
            raise ConfigError(f"batch_wait_timeout_s: {self.batch_wait_timeout_s} must be a finite number >= 0")

    @classmethod
    def from_user_config(cls, data: dict | None) -> "SamplerUserConfig":
        """Settings from a user_config mapping; unknown keys or wrong types raise ConfigError naming the key."""
        return from_dict(cls, dict(data or {}), where="user_config")


@dataclass
class SampleJob:
    """One request with every default resolved: the unit `@serve.batch` collects."""

    steps: int
    sampler: str
    guidance: float
    seeds: list[int]
    request_id: str = ""
    label: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    steer: tuple | None = None  # (concept, alpha, layer): steered jobs share a call only with the same steering

    @property
    def num_images(self) -> int:
        """Images this job asks for."""
        return len(self.seeds)

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one sampler call (same time grid, solver, CFG scale and steering)."""
        return (self.steps, self.sampler, float(self.guidance)) + ((self.steer,) if self.steer else ())


def group_compatible(jobs: list[SampleJob], max_images: int | None = None) -> list[list[int]]:
    """Indices of `jobs` grouped by batch key in order of first arrival, each group cut at `max_images` images.

    A job larger than `max_images` is a group of its own; the sampler runs it `max_images` images at a time.
    """
    groups: dict[tuple, list[list[int]]] = {}
    for i, job in enumerate(jobs):
        chunks = groups.setdefault(job.batch_key(), [[]])
        held = sum(jobs[j].num_images for j in chunks[-1])
        if chunks[-1] and max_images is not None and held + job.num_images > max_images:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]
