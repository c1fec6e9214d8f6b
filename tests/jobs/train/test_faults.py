"""The "hang" fault: fires once per run (its marker written before it blocks), and gives up after its limit
instead of blocking for ever when nothing kills the worker."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from jobs.train import faults
from jobs.train.config import FaultSpec


class _Env:
    rank = 0

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def checkpoint_location(self, step: int):
        return pafs.LocalFileSystem(), f"{self.run_dir}/checkpoints/step_{step:08d}"


class _Clock:
    """A clock that moves only when slept on: counts the hang's waits without waiting."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now, self.sleeps = self.now + seconds, self.sleeps + 1


def test_hang_fires_once_per_run_and_is_bounded(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(faults, "time", clock)
    monkeypatch.setattr(faults, "HANG_LIMIT_S", 5.0)
    injector = faults.FaultInjector(FaultSpec(step=3, mode="hang"), _Env(str(tmp_path)))
    injector.before_step(2)  # another step: nothing
    assert not (tmp_path / "_injected_failure_step3").exists() and clock.sleeps == 0
    with pytest.raises(RuntimeError, match="injected hang at step 3 was not killed within 5 s"):
        injector.before_step(3)
    assert clock.sleeps == 5  # it blocked (1 s waits) until its limit, then raised
    assert (tmp_path / "_injected_failure_step3").exists()  # written before it blocked: a test waits for it
    injector.before_step(3)  # the restarted run trains on
    other_rank = faults.FaultInjector(FaultSpec(step=3, mode="hang", rank=1), _Env(str(tmp_path / "b")))
    other_rank.before_step(3)
    assert not (tmp_path / "b").exists()
