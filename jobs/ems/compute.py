"""EMS of a checkpoint on its latent data set: the lambda nodes split over Ray tasks, sums merged, stored beside it.

Every task sees every data batch with the same per-batch noise (common random numbers: the estimator's
finite-difference l^(1) needs estimates that vary smoothly across lambda) and accumulates only its share of the
lambda nodes; the driver merges the sums (ditcore.samplers.EMSEstimator.merge) and finalises. The model is the
checkpoint's EMA network as the generation pipeline samples it (sampling_fn, the guidance scale: EMS depend on it;
a distilled student takes w as an input instead of a second forward).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import numpy as np
import torch

from jobs.progress import progress


@dataclasses.dataclass(frozen=True)
class EMSSettings:
    """How the EMS are estimated."""

    guidance: float = 1.0
    num_samples: int = 512  # data rows (posterior means, no flip)
    batch_size: int = 128
    num_nodes: int = 241  # uniform lambda nodes (the paper uses 1200; v3 interpolates between nodes)
    method: str = "jvp"  # "jvp" (forward-mode AD) or "fd" (finite differences)
    seed: int = 0
    num_tasks: int = 2  # Ray tasks splitting the lambda nodes; 0: compute in this process, no Ray

    def check(self) -> None:
        """Errors name the bad value."""
        for key in ("num_samples", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.num_nodes < 8:
            raise ValueError(f"num_nodes must be >= 8, got {self.num_nodes}")
        if self.num_tasks < 0:
            raise ValueError(f"num_tasks must be >= 0, got {self.num_tasks}")
        if self.method not in ("jvp", "fd"):
            raise ValueError(f"method must be 'jvp' or 'fd', got {self.method!r}")


def _data(pipe, settings: EMSSettings) -> list[tuple[torch.Tensor, dict]]:
    """Batches (x0 in model space, cond) of the checkpoint's data set."""
    from pipelines.latents.reader import load_latents_numpy

    keys = ("label",) if pipe.conditioning == "class" else ("text_emb", "text_mask", "text_pooled")
    rows = load_latents_numpy(pipe.data_uri("the EMS"), limit=settings.num_samples, columns=["latent_mean", *keys])
    if not rows or len(rows["latent_mean"]) == 0:
        raise ValueError(f"{pipe.manifest_uri}: no rows to estimate the EMS on")
    x0 = (torch.from_numpy(rows["latent_mean"].astype(np.float32)) - pipe.shift_factor) * pipe.scaling_factor
    cond = {("y" if k == "label" else k): torch.from_numpy(np.asarray(rows[k])) for k in keys}
    cond = {k: v.long() if k == "y" else (v.bool() if k == "text_mask" else v.float()) for k, v in cond.items()}
    out = []
    for start in range(0, x0.shape[0], settings.batch_size):
        sl = slice(start, start + settings.batch_size)
        out.append((x0[sl], {k: v[sl] for k, v in cond.items()}))
    return out


def _estimator(pipe, settings: EMSSettings, batch: int):
    from ditcore.guidance_distill import GUIDANCE_KEY
    from ditcore.samplers import EMSEstimator, ems_lambdas

    guided = settings.guidance != 1.0 and not pipe.distilled
    model_fn = pipe.model_fn
    if pipe.distilled:
        base_fn = pipe.model_fn

        def model_fn(x, t, **cond):
            return base_fn(x, t, **cond, **{GUIDANCE_KEY: torch.full((x.shape[0],), float(settings.guidance))})

    return EMSEstimator(
        model_fn,
        process=pipe.objective.process,
        prediction=pipe.prediction,
        lambdas=ems_lambdas(pipe.objective.process, settings.num_nodes),
        method=settings.method,
        uncond=pipe.null_conditions(1) if guided else None,
        guidance=settings.guidance if guided else 1.0,
    )


def ems_part(
    checkpoint: str, settings: EMSSettings, nodes: list[int], threads: Optional[int] = 1
) -> dict[str, torch.Tensor]:
    """The estimator's sums over every data batch at lambda `nodes` (one Ray task, or the whole job locally).
    `threads`: torch threads (1 in a one-CPU Ray task; None: the process's, for the job run in this process)."""
    from jobs.train.loop import mix_seed
    from pipelines.generation import GenerationPipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = GenerationPipeline.from_checkpoint(checkpoint, device="cpu", text_encoder=False)
    batches = _data(pipe, settings)
    est = _estimator(pipe, settings, batches[0][0].shape[0])
    t0 = time.time()
    for i, (x0, cond) in enumerate(batches):
        g = torch.Generator().manual_seed(mix_seed(settings.seed, i))  # same noise for this batch in every task
        est.update(x0, cond=cond, generator=g, nodes=nodes)
        if threads is None:  # in this process (a Ray task's lines would interleave; the driver counts tasks)
            progress("ems", f"batch {i + 1}/{len(batches)} over {len(nodes)} nodes, {time.time() - t0:.0f}s")
    return est.state_dict()


def _check_shared(path: str, what: str, shared_filesystem: bool) -> None:
    """The Ray tasks on other nodes must see `path` (Ray started or joined here first)."""
    from jobs.cluster.shared_storage import check_shared_storage
    from pipelines.infra.ray_runtime import init_ray

    init_ray()
    check_shared_storage(
        path, key=what, override="--shared-filesystem", shared_filesystem=shared_filesystem, readers="the EMS tasks"
    )


def compute_ems(checkpoint: str, settings: EMSSettings, *, shared_filesystem: bool = False) -> tuple[Any, dict]:
    """(EMS, info) of `checkpoint`; Ray tasks when settings.num_tasks > 0 (Ray started here if needed).

    The tasks read the checkpoint and its latent data set themselves: on a cluster of several nodes (or one that
    autoscales) a local path of either is refused (ConfigError) unless `shared_filesystem` says it is mounted at the
    same path on every node."""
    settings.check()
    from pipelines.generation import GenerationPipeline

    t0 = time.time()
    pipe = GenerationPipeline.from_checkpoint(checkpoint, device="cpu", text_encoder=False)  # a bad path: no Ray
    from jobs.evaluation.fid import check_model_fits_data

    uri = pipe.data_uri("the EMS")
    # a class model over a caption set (or latents of another shape) failed inside the Ray tasks, on their columns
    check_model_fits_data(pipe.config.get("model") or {}, pipe.conditioning, pipe.manifest, uri)
    if settings.num_tasks > 0:
        _check_shared(checkpoint, "checkpoint", shared_filesystem)
        _check_shared(uri, "data.manifest", shared_filesystem)
    merged = _estimator(pipe, settings, settings.batch_size)
    nodes = list(range(settings.num_nodes))
    if settings.num_tasks == 0:
        parts = [ems_part(checkpoint, settings, nodes, threads=None)]  # every core of this process, not one
    else:
        import ray

        task = ray.remote(num_cpus=1)(ems_part)
        chunks = [nodes[i :: settings.num_tasks] for i in range(settings.num_tasks)]
        pending = [task.remote(checkpoint, settings, c) for c in chunks if c]
        order, parts = list(pending), {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            parts[done[0]] = ray.get(done[0])
            progress("ems", f"{len(parts)}/{len(order)} tasks done, {time.time() - t0:.0f}s")
        parts = [parts[ref] for ref in order]  # merged in task order: the same sums whatever finished first
    for part in parts:
        merged.merge(part)
    ems = merged.finalize()
    info = {**dataclasses.asdict(settings), "seconds": round(time.time() - t0, 1), "distilled": pipe.distilled}
    return ems, info
