"""What the two offline encoder trainings (`train_vae`, `train_features`) share: the config base and the lr schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ditcore.config import ConfigError
from ditcore.data.builtin import BuiltinSpec
from pipelines.sources import SourceConfig
from pipelines.validation import check_positive

# Index ranges of the built-in set: training draws from [0, TRAIN_RANGE), held-out evaluation images come from
# HELDOUT_START onwards, so the two never overlap.
TRAIN_RANGE = 1_000_000_000
HELDOUT_START = 2_000_000_000


@dataclass
class EncoderTrainingConfig:
    """Output, image size and data (a source, else the built-in shapes) of an offline encoder training.

    Subclasses add `steps` and the fields named in `POSITIVE` (each checked to be >= 1).
    """

    POSITIVE = ()

    out: str = ""  # local directory or s3:// prefix
    output: str | None = None  # alias of `out` (the spelling precompute uses); wins when set
    image_size: int = 32
    # Train on this source instead of the built-in shapes (e.g. source.kind=parquet source.path=DIR/train);
    # source.limit caps the images decoded into memory.
    source: SourceConfig | None = None
    max_objects: int = 2
    background: str = "white"
    data_seed: int = 0  # BuiltinSpec.seed of the built-in images

    def __post_init__(self) -> None:
        if self.output is not None:
            self.out, self.output = self.output, None
        if self.steps < 0:
            raise ConfigError(f"steps: must be >= 0, got {self.steps}")
        check_positive(self, self.POSITIVE, "{name}: must be >= 1, got {value}", ConfigError)
        if self.source is None:  # the built-in spec's limits (sizes 32..256) apply to built-in images only
            try:
                BuiltinSpec(self.image_size, self.max_objects, self.data_seed, self.background)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc


def warmup_cosine(warmup_steps: int, steps: int, floor: float) -> Callable[[int], float]:
    """lr multiplier of a step: linear warm-up over max(warmup_steps, 1) steps, then cosine decay to `floor`
    (short runs benefit from annealing the lr); for torch.optim.lr_scheduler.LambdaLR."""
    warm = max(warmup_steps, 1)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(steps - warm, 1)
        return floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return lr_at
