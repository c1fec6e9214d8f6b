"""Training data: the Ray Dataset a run reads, batches as tensors, and latents drawn in model space.

Small sets (`data.loader: auto` under 512 MiB) are read once on the driver and put in the object store as numpy
arrays; every worker maps them (zero-copy) and draws its batches in-process from one seeded permutation of the
whole set per epoch (`epoch_batches`: the same rows per global batch for any number of workers, and no per-batch
Ray Data iteration, whose threads cost MMDiT-d1's CPU loop about a quarter of its speed). Larger sets stream
through pipelines.latents.read_latents as a Ray Dataset (validation rows filtered out, optionally materialised once
in the object store). Each step draws z = mean + std * eps from the stored posterior of the
image or its horizontal flip (chosen per sample at train time), then maps it to model space (z - shift) * scale.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from ditcore.config import ConfigError
from jobs.train.plan import RunPlan
from pipelines.latents.manifest import Manifest

DRIVER_LOADER_MAX_BYTES = 512 << 20


def mix_seed(*xs: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix-style; no Python hash randomisation)."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """The 31-bit shuffle seed of `epoch` of a run seeded `seed` (`more`: a worker's rank, for per-worker buffers)."""
    return mix_seed(seed, epoch, *more) & 0x7FFFFFFF


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


def training_columns(plan: RunPlan) -> list[str]:
    """The stored columns training reads: row id, latent posteriors (+ flips), the conditioning."""
    cols = ["id", "latent_mean", "latent_std", "latent_mean_flip", "latent_std_flip"]
    return cols + (["text_emb", "text_mask", "text_pooled"] if plan.is_text else ["label"])


def driver_rows(plan: RunPlan, val_ids: Optional[np.ndarray]) -> dict[str, np.ndarray]:
    """The training rows as numpy arrays (validation rows held out), read in this process."""
    from pipelines.latents.reader import load_latents_numpy

    rows = load_latents_numpy(plan.cfg.data.manifest, columns=training_columns(plan))
    check_labels(rows, plan.cfg.data.manifest)
    if val_ids is not None and len(val_ids):
        keep = ~np.isin(rows["id"].astype(str), np.asarray(sorted(set(str(i) for i in val_ids))))
        rows = {k: v[keep] for k, v in rows.items()}
    return rows


def check_labels(rows: dict[str, np.ndarray], manifest: str) -> None:
    """A class-conditional run's rows all carry a label: a null one reads as -1, which no class embedding has (the
    precompute now fails such rows; a data set written before may hold them)."""
    if "label" not in rows:
        return
    bad = np.flatnonzero(np.asarray(rows["label"]) < 0)
    if len(bad):
        ids = [str(i) for i in rows["id"][bad[:5]]]
        raise ConfigError(
            f"{len(bad)} of {len(rows['label'])} training rows have no class label in data.manifest {manifest!r} "
            f"(first: {ids}); precompute the data set again (rows without a label now fail there) or train a "
            "text-conditional model"
        )


def epoch_batches(
    rows: dict[str, np.ndarray],
    local_batch: int,
    seed: Optional[int],
    rank: int = 0,
    world: int = 1,
    epoch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of in-memory batches for `rank` of `world` workers.

    The rows are taken in one permutation per epoch (seeded by `seed`), cut into global batches of local_batch x
    world rows, and rank r gets the r-th slice of each: every worker yields the same number of batches (DDP steps
    together), and a global batch holds the same rows for any number of workers. The rows that do not fill a last
    global batch are left out of this epoch (the next permutation mixes them back in). With `seed` None the rows
    go in stored order, continued across epochs: epoch `epoch` starts where the batches of the epoch before it
    stopped, so the left-over rows lead the next epoch instead of never being trained."""
    n = len(next(iter(rows.values())))
    step = local_batch * world
    if seed is not None:
        order = np.random.default_rng(seed).permutation(n)
    else:
        order = np.roll(np.arange(n), -((epoch * (n - n % step)) % n) if n else 0)
    for start in range(0, n - step + 1, step):
        idx = order[start + rank * local_batch : start + (rank + 1) * local_batch]
        yield {k: v[idx] for k, v in rows.items()}


def run_epoch_batches(
    rows: dict[str, np.ndarray],
    local_batch: int,
    epoch: int,
    seed: int,
    shuffle_buffer: int,
    rank: int = 0,
    world: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """`epoch_batches` of epoch `epoch` of a run seeded `seed`: shuffled unless shuffle_buffer is 0 (then the
    stored order, continued across epochs)."""
    shuffled = epoch_seed(seed, epoch) if shuffle_buffer > 0 else None
    return epoch_batches(rows, local_batch, shuffled, rank, world, epoch)


def train_dataset(plan: RunPlan, val_ids: Optional[np.ndarray]):
    """Ray Dataset of the training rows for the streaming loader (`data.loader: ray`; validation rows held out),
    only the columns the model needs."""
    import ray.data

    from pipelines.latents.reader import read_latents

    cfg = plan.cfg
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if cfg.run.deterministic:
        ctx.execution_options.preserve_order = True  # reproducible row order for bit-exact resume
    held = set(str(i) for i in val_ids) if val_ids is not None and len(val_ids) else set()
    if "label" in training_columns(plan):  # the ids and labels only: cheap beside the latents the stream reads
        from pipelines.latents.reader import load_latents_numpy

        check_labels(load_latents_numpy(cfg.data.manifest, columns=["id", "label"]), cfg.data.manifest)
    ds = read_latents(cfg.data.manifest).select_columns(training_columns(plan))
    if held:
        ds = ds.filter(lambda row: str(row["id"]) not in held)
    if cfg.data.materialize:
        # Latent sets are compact: read + filter once into the object store instead of re-reading every epoch.
        ds = ds.materialize()
        return epoch_block_order(ds, cfg)
    return ds


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
