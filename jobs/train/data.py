"""Training data: the Ray Dataset a run reads, batches as tensors, and latents drawn in model space.

Small sets (`data.loader: auto` under 512 MiB) are read once on the driver and handed to Ray Data as one Arrow
table; larger ones stream through pipelines.latents.read_latents (validation rows filtered out, optionally
materialised once in the object store). Each step draws z = mean + std * eps from the stored posterior of the
image or its horizontal flip (chosen per sample at train time), then maps it to model space (z - shift) * scale.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from jobs.train.plan import RunPlan
from pipelines.latents.manifest import Manifest

DRIVER_LOADER_MAX_BYTES = 512 << 20
EPOCH_BLOCK_ROWS = 256  # driver-loaded rows become blocks of this size, shuffled per epoch (epoch_block_order)


def data_keys(cond_keys: tuple[str, ...]) -> tuple[str, ...]:
    """Columns a step needs: the latent posteriors (+ flip) and the model's conditioning columns."""
    cols = ("latent_mean", "latent_std", "latent_mean_flip", "latent_std_flip")
    return cols + (("label",) if cond_keys == ("y",) else cond_keys)


def row_bytes(manifest: Manifest) -> int:
    """Bytes of one row's tensor columns."""
    total = sum(int(np.prod(spec.shape or [1])) * np.dtype(spec.dtype).itemsize for spec in manifest.columns.values())
    return max(total, 1)


def loader_kind(plan: RunPlan) -> str:
    """ "driver" or "ray": data.loader, with auto choosing the driver read for sets under 512 MiB."""
    loader = plan.cfg.data.loader
    if loader == "auto":
        n_rows = int(plan.manifest.counts.written or 0)
        loader = "driver" if n_rows * row_bytes(plan.manifest) < DRIVER_LOADER_MAX_BYTES else "ray"
    return loader


def train_dataset(plan: RunPlan, val_ids: Optional[np.ndarray]):
    """Ray Dataset of the training rows (validation rows held out), only the columns the model needs."""
    import ray.data

    from pipelines.latents.reader import load_latents_numpy, read_latents

    cfg = plan.cfg
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if cfg.run.deterministic:
        ctx.execution_options.preserve_order = True  # reproducible row order for bit-exact resume
    cols = ["id", "latent_mean", "latent_std", "latent_mean_flip", "latent_std_flip"]
    cols += ["text_emb", "text_mask", "text_pooled"] if plan.is_text else ["label"]
    held = set(str(i) for i in val_ids) if val_ids is not None and len(val_ids) else set()
    if loader_kind(plan) == "driver":
        import pyarrow as pa
        from ray.data.extensions import ArrowTensorArray

        rows = load_latents_numpy(cfg.data.manifest, columns=cols)
        if held:
            keep = ~np.isin(rows["id"].astype(str), np.asarray(sorted(held)))
            rows = {k: v[keep] for k, v in rows.items()}
        table = pa.table(
            {
                k: (
                    ArrowTensorArray.from_numpy(np.ascontiguousarray(v))
                    if v.ndim > 1
                    else pa.array(v.astype(str) if k == "id" else v)
                )
                for k, v in rows.items()
            }
        )
        blocks = [table.slice(s, EPOCH_BLOCK_ROWS) for s in range(0, table.num_rows, EPOCH_BLOCK_ROWS)] or [table]
        return epoch_block_order(blocks_dataset(blocks), cfg)
    ds = read_latents(cfg.data.manifest).select_columns(cols)
    if held:
        ds = ds.filter(lambda row: str(row["id"]) not in held)
    if cfg.data.materialize:
        # Latent sets are compact: read + filter once into the object store instead of re-reading every epoch.
        ds = ds.materialize()
        return epoch_block_order(ds, cfg)
    return ds


def blocks_dataset(tables: list) -> Any:
    """A Ray Dataset of in-memory Arrow tables, one block each, built without running a Ray task.

    `ray.data.from_arrow` computes each block's metadata in a remote task that needs a whole free CPU. In a sweep
    of two trials on two CPUs, while the other trial's worker holds its ~1 CPU, the free share is below 1, so the
    next trial's data set, and with it its whole Ray Train run, waited for the other trial's training to end:
    trials ran one after the other (minutes of "start-up" per trial). `ray.data.from_blocks` computes the same
    metadata in this process."""
    import ray.data

    return ray.data.from_blocks(list(tables))


def epoch_block_order(ds, cfg):
    """Blocks in a fresh seeded order every epoch (run.seed + the epoch's execution index; the same per run).
    Deterministic runs keep one order: their bit-exact resume replays it."""
    if cfg.run.deterministic:
        return ds
    from ray.data import RandomSeedConfig

    return ds.randomize_block_order(seed=RandomSeedConfig(seed=cfg.run.seed, reseed_after_execution=True))


def batch_to_torch(
    batch: dict[str, np.ndarray], keys: tuple[str, ...], device: torch.device
) -> dict[str, torch.Tensor]:
    """The `keys` columns of a numpy batch as float32 / int64 / bool tensors on `device`."""
    out = {}
    for k in keys:
        v = np.asarray(batch[k])
        if v.dtype == object:  # ragged/list columns arrive as arrays of arrays: stack to the real shape
            v = np.stack([np.asarray(x) for x in v])
        if not v.flags.writeable:
            v = v.copy()
        t = torch.from_numpy(np.ascontiguousarray(v))
        if t.dtype in (torch.float16, torch.bfloat16, torch.float64):
            t = t.float()
        elif t.dtype == torch.int32:
            t = t.long()
        out[k] = t.to(device, non_blocking=True)
    return out


def latents_to_model_space(
    batch: dict[str, torch.Tensor], gen: torch.Generator, scale: float, shift: float, flip: torch.Tensor
) -> torch.Tensor:
    """z = mean + std * eps from the image or its flip (per-sample `flip` [B] bool), then (z - shift) * scale."""
    f = flip.view(-1, 1, 1, 1)
    mean = torch.where(f, batch["latent_mean_flip"], batch["latent_mean"])  # [B,C,h,w]
    std = torch.where(f, batch["latent_std_flip"], batch["latent_std"])  # [B,C,h,w]
    eps = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)  # [B,C,h,w]
    return (mean + std * eps - shift) * scale  # [B,C,h,w] model-space x_0
