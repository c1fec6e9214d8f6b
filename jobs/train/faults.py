"""Fault injection for the tests of fault tolerance (`debug.inject_failure`); inert in every real run.

A failure fires once per run: a marker file beside the run's checkpoints records that it happened, so the
restarted worker (or driver) trains on. Modes: "raise" (an exception), "exit" (os._exit(1): a worker killed
mid-epoch), "hang" (the worker stops making progress, as on a stuck collective, until its process is killed: a
test kills the job at a known step once the marker exists), "nan" (a non-finite loss from the step on: a diverged
run), "inf_grad" (an infinite gradient at the step while its loss stays finite: a divergence the loss read at that
step does not show)."""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import torch

from jobs.train.config import FaultSpec

# A hung worker gives up after this long (a test that never kills it must not leave it behind for ever).
HANG_LIMIT_S = 900.0


class FaultInjector:
    """Checks each step against the configured fault; a no-op when none is configured."""

    def __init__(self, spec: Optional[FaultSpec], env: Any) -> None:
        self.spec = spec
        self.env = env

    def before_step(self, step: int) -> None:
        """Raise / exit / hang at the configured step on the configured rank (once per run)."""
        s = self.spec
        if s is None or s.mode in ("nan", "inf_grad") or s.step != step or self.env.rank != s.rank:
            return
        if self._mark_fired():
            if s.mode == "exit":
                os._exit(1)
            if s.mode == "hang":
                end = time.monotonic() + HANG_LIMIT_S
                while time.monotonic() < end:
                    time.sleep(1.0)
                raise RuntimeError(f"injected hang at step {s.step} was not killed within {HANG_LIMIT_S:g} s")
            raise RuntimeError(f"injected failure at step {s.step}")

    def corrupt_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """A non-finite loss from the configured step on ("nan" mode), else the loss itself."""
        if self.spec is not None and self.spec.mode == "nan" and step >= self.spec.step:
            return loss * float("nan")
        if self.spec is not None and self.spec.mode == "inf_grad" and step == self.spec.step:
            loss = loss * 1.0  # a node of its own: the hook scales only this step's gradient
            loss.register_hook(lambda g: g * float("inf"))
        return loss

    def _mark_fired(self) -> bool:
        """Write the one-shot marker; False when it already exists (the failure happened before a restart)."""
        import pyarrow.fs as pafs

        fs, path = self.env.checkpoint_location(0)
        marker = path.rsplit("/checkpoints/", 1)[0] + f"/_injected_failure_step{self.spec.step}"
        if fs.get_file_info(marker).type != pafs.FileType.NotFound:
            return False
        fs.create_dir(marker.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(marker) as f:
            f.write(b"1")
        return True
