"""Class-mixed data from a class-sorted (ImageNet-style) folder: shards, `source.limit` and training batches.

The precompute writes a latent data set's rows in the source plan's shard order, and training reads them in that
order (blocks in order, a 256-row local shuffle at most). So if the plan's row order is mixed, so is every
training batch; these tests check the row order the plan gives, batch by batch, against the maximum entropy.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines.sources import SourceConfig, plan_source, read_shard

NUM_CLASSES = 10
PER_CLASS = 60


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """root/<class>/<i>.png for 10 classes; the bytes are not images (the plan lists files, reads none)."""
    root = tmp_path_factory.mktemp("classes")
    for c in range(NUM_CLASSES):
        (root / f"class{c:02d}").mkdir()
        for i in range(PER_CLASS):
            (root / f"class{c:02d}" / f"{i:04d}.png").write_bytes(b"x")
    return root


def _row_classes(cfg: SourceConfig) -> list[str]:
    """Class of every row in the order the precompute writes them (shard order, file order in a shard)."""
    plan = plan_source(cfg, 32)
    return [rel.split("/", 1)[0] for shard in plan.shards for rel in shard["files"]]


def _entropy(labels: list[str]) -> float:
    counts = np.array(list(Counter(labels).values()), np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _batch_entropies(rows: list[str], batch_size: int) -> np.ndarray:
    return np.array([_entropy(rows[s : s + batch_size]) for s in range(0, len(rows) - batch_size + 1, batch_size)])


def test_training_batches_mix_the_classes(folder):
    rows = _row_classes(SourceConfig(kind="folder", path=str(folder), shard_size=64))
    assert sorted(Counter(rows).values()) == [PER_CLASS] * NUM_CLASSES  # every file once
    # Batches of 64 consecutive rows, i.e. with no further shuffling at all (the worst a training read can do).
    ent = _batch_entropies(rows, 64)
    assert ent.mean() >= 0.9 * math.log(NUM_CLASSES)
    assert ent.min() >= 0.8 * math.log(NUM_CLASSES)
    # The sorted order (source.shuffle: false) is what a class-sorted folder gives unshuffled: 1-2 classes a batch.
    sorted_rows = _row_classes(SourceConfig(kind="folder", path=str(folder), shard_size=64, shuffle=False))
    assert _batch_entropies(sorted_rows, 64).mean() < 0.5 * math.log(NUM_CLASSES)


def test_a_limit_subset_holds_every_class(folder):
    cfg = SourceConfig(kind="folder", path=str(folder), shard_size=16, limit=40)
    rows = _row_classes(cfg)
    assert len(rows) == 40 and set(rows) == {f"class{c:02d}" for c in range(NUM_CLASSES)}
    # Labels come from the class folders, whatever the order.
    plan = plan_source(cfg, 32)
    shard = read_shard(plan.shards[0], cfg, plan.classes)
    assert [plan.classes[i] for i in shard["label"]] == [rel.split("/", 1)[0] for rel in plan.shards[0]["files"]]
    # A smaller limit is a prefix of a larger one (so a grown data set keeps its earlier shards).
    assert _row_classes(SourceConfig(kind="folder", path=str(folder), shard_size=16, limit=24)) == rows[:24]
    # Another seed, another order; the same seed, the same order.
    other = _row_classes(SourceConfig(kind="folder", path=str(folder), shard_size=16, limit=40, seed=1))
    assert other != rows and _row_classes(cfg) == rows
    unshuffled = _row_classes(SourceConfig(kind="folder", path=str(folder), shard_size=16, limit=40, shuffle=False))
    assert set(unshuffled) == {"class00"}
