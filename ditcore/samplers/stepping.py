"""The grid walk the one-evaluation-per-interval samplers share (see ditcore/samplers/grids.py).

Every interval (cur, nxt) of the decreasing grid starts with one model evaluation at cur; the last interval,
into sigma = 0, returns the x0 prediction itself (grids.py: "denoise to zero"); every other one is the
sampler's own update.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from ditcore.processes import Process
from ditcore.samplers.grids import GridPoint, grid_point


def grid_points(process: Process, ts: torch.Tensor) -> list[GridPoint]:
    """The process coefficients at every time of the grid ts."""
    return [grid_point(process, float(t)) for t in ts]


def walk_grid(
    evaluate: Callable[..., tuple],
    x: torch.Tensor,
    points: Sequence[GridPoint],
    step: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """x after the walk along `points`: out = evaluate(x, cur.t) (x0 prediction first), then
    x = step(cur, nxt, x, *out), except on the last interval into sigma = 0, which takes out[0]."""
    for cur, nxt in itertools.pairwise(points):
        out = evaluate(x, cur.t)
        x = out[0] if nxt.sigma == 0.0 else step(cur, nxt, x, *out)
    return x
