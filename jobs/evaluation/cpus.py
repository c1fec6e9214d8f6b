"""Idle CPUs of this node, reserved through Ray for one evaluation point so in-process sampling can use them.

A sweep trial that samples in its own process (`eval.num_actors: 0`) runs on the CPUs its training workers just
released. When the rest of the node is idle as well (the last trial of a sweep, once the others have finished), those
CPUs would stay idle while it evaluates. `spare_cpus` reserves the whole CPUs that Ray has not handed out on this
node in a placement group pinned to the node (label `ray.io/node-id`), for one point, and the sampler runs that many
more torch threads. The reservation keeps Ray's books right: work that arrives meanwhile (a trial's worker group)
waits at most one point for them instead of sharing cores, and two trials evaluating at once do not both take them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

# How long to wait for a reservation (it is granted in milliseconds when the CPUs are free) and for a released one
# to show as available again (Ray frees a removed placement group's CPUs asynchronously, ~0.1 s).
_GRANT_WAIT_S = 1.0
_RELEASE_WAIT_S = 2.0


def _available_cpus(ray) -> float:
    return float(ray.available_resources().get("CPU", 0.0))


def _node_cpus(ray, node_id: str) -> float:
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("Alive"):
            return float(node.get("Resources", {}).get("CPU", 0.0))
    return 0.0


@contextlib.contextmanager
def spare_cpus(own_cpus: float, *, threads: int = 1, enabled: bool = True) -> Iterator[int]:
    """Whole CPUs reserved on this node for the `with` block (0 when Ray is not running, none is free, or disabled).

    `own_cpus`: CPUs this process already counts as its own although Ray shows them as free (the CPUs its trial's
    workers released); only CPUs beyond those are reserved. `threads`: the sampler's threads without a reservation;
    with it, threads + the reserved CPUs never exceed the node's CPUs. Ray reports free CPUs for the whole cluster,
    so on a multi-node cluster the request can name CPUs of another node: it is then not granted (within
    `_GRANT_WAIT_S`) and the block gets 0.
    """
    pg, extra = _reserve(own_cpus, threads) if enabled else (None, 0)
    try:
        yield extra
    finally:
        if pg is not None:
            _release(pg, extra)


def _reserve(own_cpus: float, threads: int) -> tuple[object | None, int]:
    """(placement group, whole CPUs it holds) for the idle CPUs of this node, or (None, 0)."""
    import ray
    from ray.util.placement_group import NODE_ID_LABEL_KEY, placement_group, remove_placement_group

    if not ray.is_initialized():
        return None, 0
    node = ray.get_runtime_context().get_node_id()
    # The sampler's own threads stay on own_cpus; at most the node's other CPUs are added.
    limit = int(math.floor(_node_cpus(ray, node) - max(own_cpus, threads, 1) + 1e-6))
    want = min(limit, int(math.floor(_available_cpus(ray) - own_cpus + 1e-6)))
    if want < 1:
        return None, 0
    pg = placement_group(
        [{"CPU": float(want)}], strategy="STRICT_PACK", bundle_label_selector=[{NODE_ID_LABEL_KEY: node}]
    )
    if pg.wait(timeout_seconds=_GRANT_WAIT_S):
        return pg, want
    remove_placement_group(pg)
    return None, 0


def _release(pg, cpus: int) -> None:
    """Remove the reservation and wait (bounded) until Ray shows its CPUs free again, so the next point sees them."""
    import ray
    from ray.util.placement_group import remove_placement_group

    before = _available_cpus(ray)
    remove_placement_group(pg)
    deadline = time.monotonic() + _RELEASE_WAIT_S
    while time.monotonic() < deadline and _available_cpus(ray) < before + cpus - 1e-6:
        time.sleep(0.02)
