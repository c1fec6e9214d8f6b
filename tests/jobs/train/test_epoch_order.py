"""Every epoch reads its rows in a fresh seeded order: the driver loader's in-memory batches
(jobs.train.data.epoch_batches: one permutation of the whole set, cut into global batches, one slice per worker) and
the streaming loader's materialised blocks (jobs.train.data.epoch_block_order)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from jobs.train.data import epoch_batches, epoch_block_order
from tests.pipelines._precompute_helpers import ray_module

ROWS = {"x": np.arange(66), "y": np.arange(66) * 10}


def _ids(batches) -> list[list[int]]:
    return [b["x"].tolist() for b in batches]


def test_in_memory_epochs_are_fresh_seeded_permutations():
    a, b = _ids(epoch_batches(ROWS, 8, seed=1)), _ids(epoch_batches(ROWS, 8, seed=2))
    assert len(a) == 8 and all(len(x) == 8 for x in a)  # 66 rows: 8 full batches, 2 rows left for this epoch
    flat = sum(a, [])
    assert len(set(flat)) == 64 and flat != sorted(flat)  # no row twice, shuffled across the whole set
    assert a == _ids(epoch_batches(ROWS, 8, seed=1)) and a != b  # reproducible per seed, another seed: other order
    assert sum(_ids(epoch_batches(ROWS, 8, seed=None)), []) == list(range(64))  # no seed: the stored order
    first = next(epoch_batches(ROWS, 8, seed=1))
    assert (first["y"] == first["x"] * 10).all()  # columns stay aligned


def test_workers_split_each_global_batch_so_any_worker_count_sees_the_same_rows():
    one = _ids(epoch_batches(ROWS, 8, seed=3))
    for world in (2, 4):
        per_rank = [_ids(epoch_batches(ROWS, 8 // world, seed=3, rank=r, world=world)) for r in range(world)]
        assert len({len(steps) for steps in per_rank}) == 1  # every worker takes the same number of steps
        for step, rows in enumerate(one):
            assert sum((per_rank[r][step] for r in range(world)), []) == rows


@pytest.fixture(scope="module")
def ray_local():
    yield from ray_module()


def _epochs(ray, seed: int, deterministic: bool = False, n: int = 3) -> list[list[int]]:
    """First row of every 8-row batch, per epoch, read as a Ray Train worker reads its shard (streaming_split)."""
    ds = ray.data.from_blocks([pa.table({"x": np.arange(64)}).slice(s, 8) for s in range(0, 64, 8)])
    cfg = SimpleNamespace(run=SimpleNamespace(seed=seed, deterministic=deterministic))
    (shard,) = epoch_block_order(ds, cfg).streaming_split(1, equal=True)
    return [[int(b["x"][0]) for b in shard.iter_batches(batch_size=8, batch_format="numpy")] for _ in range(n)]


@pytest.mark.slow  # a local Ray
def test_streaming_blocks_are_reordered_every_epoch_and_reproducibly(ray_local):
    a = _epochs(ray_local, seed=0)
    assert all(sorted(e) == list(range(0, 64, 8)) for e in a)  # every block once per epoch
    assert a[0] != a[1] and a[1] != a[2] and a[0] != a[2]  # a fresh order each epoch
    assert _epochs(ray_local, seed=0) == a  # the same run again: the same orders
    assert _epochs(ray_local, seed=1) != a  # another seed: other orders
    # Deterministic runs keep the stored order (their bit-exact resume replays it).
    assert _epochs(ray_local, seed=0, deterministic=True, n=2) == [list(range(0, 64, 8))] * 2


def test_the_stored_order_continues_across_epochs_so_no_row_is_left_out_for_good():
    # shuffle_buffer 0: no permutation; 66 rows in batches of 8 leave 2 rows over, which lead the next epoch.
    epochs = [_ids(epoch_batches(ROWS, 8, seed=None, epoch=e)) for e in range(3)]
    assert sum(epochs[0], []) == list(range(64))
    assert epochs[1][0] == [64, 65, 0, 1, 2, 3, 4, 5] and sum(epochs[1], []) == [64, 65, *range(62)]
    assert {r for e in epochs for b in e for r in b} == set(range(66))
