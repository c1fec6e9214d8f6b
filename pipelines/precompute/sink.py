"""Writing encoded rows where they are, not through the driver: the precompute's Ray Data datasink.

Each write task commits every part (a block's rows of one shard, starting at row `first` of the shard) it receives:
    data/part-SSSSS-FFFFFFF.parquet              the rows that encoded (tensors as flat fixed-size lists)
    _progress/part-SSSSS-FFFFFFF.failures.parquet the rows that did not (id, source, reason, shard)
    _progress/part-SSSSS-FFFFFFF.stats.safetensors per-channel latent sums and FID (count, mean, M2): mergeable
    _progress/part-SSSSS-FFFFFFF.json            the commit marker, written last
and returns only that marker to the driver, so the driver's memory does not grow with the data. A shard is
complete when its parts cover rows [0, total) and one of them is its last (pipelines/precompute/finalize.py).
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable

import numpy as np

from pipelines.infra import storage

DATA_DIR = "data"
PROGRESS_DIR = "_progress"
NULL_SHARD = -1  # pseudo shard carrying the empty prompt through the encoder
NULL_ID = "<null-text>"
NULL_TEXT_FILE = "null_text.safetensors"
TENSOR_COLUMNS = (
    "latent_mean",
    "latent_std",
    "latent_mean_flip",
    "latent_std_flip",
    "text_emb",
    "text_mask",
    "text_pooled",
)


def part_name(shard: int, first: int) -> str:
    """part-SSSSS-FFFFFFF: shard id and the shard-row index of the part's first row (sorts in row order)."""
    return f"part-{shard:05d}-{first:07d}"


def parquet_bytes(table: Any) -> bytes:
    """A pyarrow table as zstd parquet bytes."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def failures_schema() -> Any:
    """Schema of failures.parquet."""
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("shard", pa.int32())])


def _tensor_field(name: str, arr: np.ndarray) -> tuple[Any, Any]:
    """A flat fixed-size list column (plain pyarrow/pandas/Ray all read it) carrying its shape as metadata."""
    import pyarrow as pa

    shape = list(arr.shape[1:])
    col = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(arr).reshape(-1)), int(np.prod(shape)) if shape else 1
    )
    fld = pa.field(
        name,
        col.type,
        nullable=False,
        metadata={b"shape": json.dumps(shape).encode(), b"dtype": str(arr.dtype).encode()},
    )
    return fld, col


def _data_table(rows: dict[str, np.ndarray], good: np.ndarray, has_labels: bool) -> tuple[Any, dict]:
    """(parquet table of the good rows, {column: {shape, dtype}})."""
    import pyarrow as pa

    fields = [pa.field("id", pa.string(), nullable=False)]
    cols = [pa.array([str(x) for x in rows["id"][good]], pa.string())]
    if has_labels:
        fields.append(pa.field("label", pa.int32()))
        cols.append(pa.array([None if v < 0 else int(v) for v in rows["label"][good]], pa.int32()))
    fields.append(pa.field("caption", pa.string()))
    cols.append(
        pa.array([str(c) if h else None for c, h in zip(rows["caption"][good], rows["has_caption"][good])], pa.string())
    )
    specs = {}
    for name in TENSOR_COLUMNS:
        if name in rows:
            arr = rows[name][good]
            fld, col = _tensor_field(name, arr)
            fields.append(fld)
            cols.append(col)
            specs[name] = {"dtype": str(arr.dtype), "shape": list(arr.shape[1:])}
    return pa.Table.from_arrays(cols, schema=pa.schema(fields)), specs


def _stats(rows: dict[str, np.ndarray], good: np.ndarray, has_fid: bool) -> dict[str, np.ndarray]:
    """Mergeable statistics of the good rows: per-channel latent sums, FID (count, mean, M2)."""
    from ditcore.metrics.fid import FeatureStats

    written = int(good.sum())
    stats: dict[str, np.ndarray] = {"count": np.array([written], np.int64)}
    if written:
        lat = rows["latent_mean"][good].astype(np.float64)  # [N,C,h,w]
        stats["lat_sum"] = lat.sum(axis=(0, 2, 3))
        stats["lat_sumsq"] = (lat**2).sum(axis=(0, 2, 3))
        stats["lat_elems"] = np.array([lat.shape[0] * lat.shape[2] * lat.shape[3]], np.int64)
        if has_fid:
            fs = FeatureStats().update(rows["fid_feat"][good])
            stats["fid_mean"], stats["fid_m2"] = fs.mean, fs.m2
    return stats


def commit_part(output: str, rows: dict[str, np.ndarray], has_labels: bool, has_fid: bool) -> dict[str, Any]:
    """Write one part (rows of one shard, in shard order) and its marker; the marker."""
    import pyarrow as pa
    from safetensors.numpy import save as st_save

    order = np.argsort(rows["order"], kind="stable")
    rows = {k: np.asarray(v)[order] for k, v in rows.items()}
    shard, first, n = int(rows["shard"][0]), int(rows["order"][0]), len(rows["id"])
    errors = [str(e) for e in rows["error"]]
    good = np.array([not e for e in errors], dtype=bool)
    name, prog = part_name(shard, first), storage.join(output, PROGRESS_DIR)
    failures = pa.table(
        {
            "id": pa.array([str(x) for x in rows["id"][~good]], pa.string()),
            "source": pa.array([str(x) for x in rows["source"][~good]], pa.string()),
            "reason": pa.array([e for e in errors if e], pa.string()),
            "shard": pa.array([shard] * int((~good).sum()), pa.int32()),
        },
        schema=failures_schema(),
    )
    storage.write_bytes(storage.join(prog, f"{name}.failures.parquet"), parquet_bytes(failures))
    storage.write_bytes(storage.join(prog, f"{name}.stats.safetensors"), st_save(_stats(rows, good, has_fid)))
    specs = {}
    if good.any():
        table, specs = _data_table(rows, good, has_labels)
        storage.write_bytes(storage.join(output, DATA_DIR, f"{name}.parquet"), parquet_bytes(table))
    totals = rows["shard_total"][rows["shard_total"] >= 0]
    labels = rows["label"][good]
    marker = {
        "part": name,
        "shard": shard,
        "first": first,
        "rows": n,
        "written": int(good.sum()),
        "failed": int((~good).sum()),
        "total": int(totals[0]) if len(totals) else None,
        "max_label": int(labels.max()) if len(labels) else -1,
        "columns": specs,
    }
    storage.write_json(storage.join(prog, f"{name}.json"), marker)
    return marker


def _write_null_text(output: str, rows: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save as st_save

    i = int(np.flatnonzero(rows["shard"] == NULL_SHARD)[0])
    if rows["error"][i]:
        raise RuntimeError(f"encoding the empty prompt failed: {rows['error'][i]}")
    arrays = {k: np.ascontiguousarray(rows[k][i]) for k in ("text_emb", "text_mask", "text_pooled")}
    storage.write_bytes(storage.join(output, NULL_TEXT_FILE), st_save(arrays))


def _blocks_to_rows(blocks: Iterable[Any]) -> Iterable[dict[str, np.ndarray]]:
    from ray.data.block import BlockAccessor

    for block in blocks:
        acc = BlockAccessor.for_block(block)
        if acc.num_rows():
            yield acc.to_batch_format("numpy")


def _datasink_base() -> type:
    from ray.data import Datasink

    return Datasink


class PartSink(_datasink_base()):  # type: ignore[misc]
    """Ray Data datasink committing each shard part in the write task; the driver receives only the markers."""

    def __init__(self, output: str, has_labels: bool, has_fid: bool) -> None:
        self.output, self.has_labels, self.has_fid = output, has_labels, has_fid
        self.markers: list[dict[str, Any]] = []

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[dict[str, Any]]:
        """Commit every (shard, part) of the task's blocks; their markers."""
        markers = []
        for rows in _blocks_to_rows(blocks):
            shards = np.asarray(rows["shard"])
            if (shards == NULL_SHARD).any():
                _write_null_text(self.output, rows)
            for s in np.unique(shards[shards != NULL_SHARD]):
                sel = shards == s
                markers.append(
                    commit_part(
                        self.output, {k: np.asarray(v)[sel] for k, v in rows.items()}, self.has_labels, self.has_fid
                    )
                )
        return markers

    def on_write_complete(self, write_result: Any) -> None:
        """Collect the markers of every write task (small: counts and column specs)."""
        for markers in write_result.write_returns:
            self.markers.extend(markers)
