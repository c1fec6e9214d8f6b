"""Idle CPUs reserved through Ray for in-process sampling: granted only beyond the caller's own CPUs, pinned to this
node, visible to everyone else while held, and free again when the block ends."""

from __future__ import annotations

import time

import pytest

from jobs.evaluation.cpus import spare_cpus


def _free_cpus() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def _until(cond, timeout: float = 10.0) -> bool:
    """Poll a condition on Ray's resource view (it updates asynchronously) until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.slow
def test_spare_cpus_reserves_the_idle_cpus_beyond_its_own_and_frees_them():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with spare_cpus(1.0) as none:
        assert none == 0  # no Ray: nothing to reserve
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    try:
        with spare_cpus(1.0, enabled=False) as off:
            assert off == 0 and _free_cpus() == 3.0
        # The caller counts 1 of the 3 free CPUs as its own (its released workers): the other 2 are reserved.
        with spare_cpus(1.0) as extra:
            assert extra == 2
            assert _until(lambda: _free_cpus() == 1.0)  # held: Ray hands them to no one else
            # A second evaluation that owns the last free CPU gets nothing more: the reserved ones are taken.
            with spare_cpus(1.0) as second:
                assert second == 0
            with spare_cpus(0.0) as third:
                assert third == 1 and _until(lambda: _free_cpus() == 0.0)
        assert _free_cpus() == 3.0  # released before the block returns, so the next point sees them
        with spare_cpus(2.5) as few:
            assert few == 0  # less than one whole CPU beyond its own
        with spare_cpus(1.0, threads=2) as capped:
            assert capped == 1  # 2 threads of its own + 1 reserved = the node's 3 CPUs
    finally:
        ray.shutdown()
