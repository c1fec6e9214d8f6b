"""The one reader of latent data sets (docs/architecture.md, "Latent dataset"): training, evaluation, serving.

On disk, tensor columns are flat fixed-size lists (so plain pyarrow, pandas and Ray all read them) and
their shapes live in `manifest.json["columns"]` (and in each parquet field's metadata). These functions
hide that: every tensor comes back with its real shape, e.g. latent_mean float16 [C,h,w].

    read_manifest(uri)                  -> Manifest (typed, pipelines.latents.manifest)
    read_latents(uri, columns=None)     -> ray.data.Dataset   rows of numpy arrays with real shapes
    load_latents_numpy(uri, limit=None) -> dict[str, np.ndarray]  (no Ray; small sets / tests / eval)
    load_null_text(uri)                 -> {"text_emb" [L,D], "text_mask" [L], "text_pooled" [Dp]} torch or None
    load_fid_stats(uri)                 -> (mu float64 [F], sigma float64 [F,F]) numpy
    to_model_space(mean, std, ...)      -> z_model = (mean + std * eps - shift) * scale (posterior sample)
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from pipelines.infra import storage
from pipelines.latents.manifest import ColumnSpec, LatentDatasetError, Manifest, dataset_root


def read_manifest(uri: str) -> Manifest:
    """The data set's manifest (typed); a directory without one is an incomplete or foreign data set."""
    return Manifest.read(uri)


def data_files(uri: str, manifest: Manifest | None = None) -> list[str]:
    """Sorted URIs of the parquet shards (the row order of every reader)."""
    manifest = manifest or read_manifest(uri)
    d = storage.join(dataset_root(uri), manifest.data)
    return [storage.join(d, n) for n in storage.listdir(d) if n.startswith("part-") and n.endswith(".parquet")]


def _restore(table_or_batch: Any, shapes: dict[str, ColumnSpec]) -> dict[str, np.ndarray]:
    """pyarrow Table -> dict of numpy with tensor columns reshaped to [N, *shape]."""
    out: dict[str, np.ndarray] = {}
    n = table_or_batch.num_rows
    for name in table_or_batch.column_names:
        col = table_or_batch.column(name)
        if name in shapes:
            shape, dtype = shapes[name].shape, np.dtype(shapes[name].dtype)
            col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
            flat = col.flatten().to_numpy(zero_copy_only=False)
            out[name] = np.asarray(flat, dtype=dtype).reshape(n, *shape)
        elif name == "label":
            out[name] = np.asarray(col.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int32)
        else:
            out[name] = np.asarray(col.to_pylist(), dtype=object)
    return out


def read_latents(uri: str, columns: Sequence[str] | None = None, **read_kwargs: Any):
    """A Ray Dataset over the shards; rows hold numpy arrays with their real shapes (latent_mean [C,h,w], ...)."""
    import ray

    manifest = read_manifest(uri)
    files = data_files(uri, manifest)
    if not files:
        return ray.data.from_items([])
    fs, _ = storage.get_fs(uri)
    paths = [storage.get_fs(f)[1] for f in files]
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=list(columns) if columns else None, **read_kwargs)
    shapes = manifest.columns
    return ds.map_batches(_restore, batch_format="pyarrow", fn_kwargs={"shapes": shapes}, batch_size=None)


def load_latents_numpy(
    uri: str, limit: int | None = None, columns: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """All rows (or the first `limit`, in shard order) as numpy arrays with real shapes; no Ray needed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = read_manifest(uri)
    tables, rows = [], 0
    for f in data_files(uri, manifest):
        if limit is not None and rows >= limit:
            break
        fs, path = storage.get_fs(f)
        with fs.open_input_file(path) as fh:
            t = pq.read_table(fh, columns=list(columns) if columns else None)
        tables.append(t)
        rows += t.num_rows
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    if limit is not None:
        table = table.slice(0, limit)
    return _restore(table, manifest.columns)


def _read_safetensors(uri: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(storage.read_bytes(uri))


def load_null_text(uri: str) -> dict[str, Any] | None:
    """The empty-prompt embedding {"text_emb" [L,D] f16, "text_mask" [L] bool, "text_pooled" [Dp] f16}
    as torch; None without text."""
    import torch

    manifest = read_manifest(uri)
    if manifest.text is None or not manifest.text.null:
        return None
    arrays = _read_safetensors(storage.join(dataset_root(uri), manifest.text.null))
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def load_fid_stats(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """FID reference statistics of the data set: (mu float64 [F], sigma float64 [F,F])."""
    manifest = read_manifest(uri)
    if manifest.fid is None or not manifest.fid.stats:
        raise LatentDatasetError(
            f"{uri}: the data set has no FID reference statistics (precompute ran with fid: null?)"
        )
    arrays = _read_safetensors(storage.join(dataset_root(uri), manifest.fid.stats))
    return arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)


def read_failures(uri: str):
    """failures.parquet as a pyarrow Table (id, source, reason, shard)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(dataset_root(uri), "failures.parquet"))))


def to_model_space(mean: Any, std: Any, scaling_factor: float, shift_factor: float = 0.0, eps: Any = None) -> Any:
    """z_model = (z - shift) * scale with z = mean + std * eps (eps=None: the posterior mean)."""
    z = mean if eps is None else mean + std * eps
    return (z - shift_factor) * scaling_factor


__all__ = [
    "read_manifest",
    "read_latents",
    "load_latents_numpy",
    "load_null_text",
    "load_fid_stats",
    "read_failures",
    "data_files",
    "to_model_space",
    "LatentDatasetError",
    "Manifest",
]
