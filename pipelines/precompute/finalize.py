"""Closing a precompute: which shards are complete, and the data set's failures, statistics and manifest.

A shard is complete when its committed parts (pipelines/precompute/sink.py) cover rows [0, total) exactly and one of
them carries the total. Incomplete shards of an interrupted run are cleared and done again, so no row is ever
duplicated. The merge reads one part's statistics at a time (the driver's memory does not grow with the data) in
shard and row order, so the merged statistics do not depend on which run, actor or task wrote which part.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ditcore.config import to_dict
from pipelines.infra import storage
from pipelines.latents.manifest import SCHEMA_VERSION, Manifest
from pipelines.precompute.config import PrecomputeConfig
from pipelines.precompute.sink import DATA_DIR, NULL_TEXT_FILE, PROGRESS_DIR, failures_schema
from pipelines.sources import SourcePlan


def read_markers(output: str) -> dict[int, list[dict[str, Any]]]:
    """The committed part markers under `output`, by shard, in row order (one listing, parallel reads)."""
    prog = storage.join(output, PROGRESS_DIR)
    names = [n for n in storage.listdir(prog) if n.startswith("part-") and n.endswith(".json")]
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(lambda n: storage.read_json(storage.join(prog, n)), names))
    by_shard: dict[int, list[dict]] = {}
    for m in found:
        by_shard.setdefault(int(m["shard"]), []).append(m)
    return {s: sorted(parts, key=lambda m: m["first"]) for s, parts in by_shard.items()}


def is_complete(parts: list[dict[str, Any]]) -> bool:
    """Whether a shard's parts cover rows [0, total) exactly, with its total known."""
    totals = {p["total"] for p in parts if p.get("total") is not None}
    if len(totals) != 1:
        return False
    nxt = 0
    for p in parts:
        if p["first"] != nxt:
            return False
        nxt += p["rows"]
    return nxt == totals.pop()


def clear_shards(output: str, shards: list[int]) -> None:
    """Delete every file of these shards' parts (incomplete shards about to be done again).

    Found by listing, not from the markers: a part killed between its data file and its marker has no marker, and a
    resume with another `compute.chunk_rows` cuts the shard into parts of other names, so that data file would
    otherwise stay beside the new rows and every reader (which lists data/) would see its rows twice.
    """
    prefixes = tuple(f"part-{s:05d}-" for s in shards)
    if not prefixes:
        return
    for sub in (PROGRESS_DIR, DATA_DIR):
        d = storage.join(output, sub)
        for name in storage.listdir(d):
            if name.startswith(prefixes):
                storage.delete(storage.join(d, name))


def mark_empty(output: str, shard: int) -> dict[str, Any]:
    """The marker of a shard that yielded no rows at all (e.g. an empty tar): complete with total 0."""
    from safetensors.numpy import save as st_save

    from pipelines.precompute.sink import parquet_bytes, part_name

    name = part_name(shard, 0)
    prog = storage.join(output, PROGRESS_DIR)
    storage.write_bytes(storage.join(prog, f"{name}.failures.parquet"), parquet_bytes(failures_schema().empty_table()))
    storage.write_bytes(storage.join(prog, f"{name}.stats.safetensors"), st_save({"count": np.zeros(1, np.int64)}))
    marker = {
        "part": name,
        "shard": shard,
        "first": 0,
        "rows": 0,
        "written": 0,
        "failed": 0,
        "total": 0,
        "max_label": -1,
        "columns": {},
    }
    storage.write_json(storage.join(prog, f"{name}.json"), marker)
    return marker


def _write_failures(output: str, parts: list[dict[str, Any]]) -> int:
    """failures.parquet from the parts' failure files, streamed (one part in memory at a time); rows written."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    n = 0
    with pq.ParquetWriter(buf, failures_schema(), compression="zstd") as writer:
        for p in parts:
            if p["failed"]:
                table = pq.read_table(
                    io.BytesIO(storage.read_bytes(storage.join(output, PROGRESS_DIR, f"{p['part']}.failures.parquet")))
                )
                writer.write_table(table)
                n += table.num_rows
    storage.write_bytes(storage.join(output, "failures.parquet"), buf.getvalue())
    return n


def _merge_stats(output: str, parts: list[dict[str, Any]], channels: int) -> tuple[dict, Any]:
    """(per-channel latent mean/std of latent_mean, merged FID FeatureStats) from the parts' statistics."""
    from safetensors.numpy import load as st_load

    from ditcore.metrics.fid import FeatureStats

    lat_sum, lat_sumsq, lat_n, fid = np.zeros(channels), np.zeros(channels), 0, FeatureStats()
    for p in parts:
        if not p["written"]:
            continue
        st = st_load(storage.read_bytes(storage.join(output, PROGRESS_DIR, f"{p['part']}.stats.safetensors")))
        lat_sum += st["lat_sum"]
        lat_sumsq += st["lat_sumsq"]
        lat_n += int(st["lat_elems"][0])
        if "fid_mean" in st:
            fid._combine(int(st["count"][0]), st["fid_mean"], st["fid_m2"])
    mean = lat_sum / max(lat_n, 1)
    std = np.sqrt(np.maximum(lat_sumsq / max(lat_n, 1) - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist(), "of": "latent_mean"}, fid


def _read_ids(output: str, part: dict[str, Any]) -> np.ndarray:
    """The id column of one written part (object array of str)."""
    import pyarrow.parquet as pq

    data = storage.read_bytes(storage.join(output, DATA_DIR, f"{part['part']}.parquet"))
    return np.asarray(pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist(), dtype=object)


def duplicate_ids(output: str, parts: list[dict[str, Any]], examples: int = 5) -> tuple[int, list[str]]:
    """(rows whose id an earlier row already has, up to `examples` such ids). Training holds out validation rows
    and orders per-sample losses by id, so ids should be unique; a repeat is counted and named, not dropped.

    Two passes over the id columns: 64-bit hashes of every id (8 bytes a row in memory), then the exact ids of the
    rows whose hash repeats, so a hash collision is never reported as a duplicate."""
    import pandas as pd

    written = [p for p in parts if p["written"]]
    hashes = [pd.util.hash_array(_read_ids(output, p)) for p in written]
    if not hashes:
        return 0, []
    values, counts = np.unique(np.concatenate(hashes), return_counts=True)
    repeated = values[counts > 1]
    if not len(repeated):
        return 0, []
    seen: dict[str, int] = {}
    for p, h in zip(written, hashes):
        hit = np.isin(h, repeated)
        if hit.any():
            for i in _read_ids(output, p)[hit]:
                seen[i] = seen.get(i, 0) + 1
    dups = [i for i, c in seen.items() if c > 1]
    return sum(seen[i] - 1 for i in dups), dups[:examples]


def _fid_record(cfg: PrecomputeConfig, fid: Any) -> dict | None:
    """Write fid_stats.safetensors (mu, sigma over all written rows); the manifest's fid entry."""
    if cfg.fid is None:
        return None
    from safetensors.numpy import save as st_save

    if fid.count < 2:
        return {
            "feature_net": cfg.fid.feature_net,
            "feature_dim": None,
            "stats": None,
            "count": int(fid.count),
            "note": "fewer than 2 rows written: no covariance",
        }
    mu, sigma = fid.compute()
    storage.write_bytes(
        storage.join(cfg.output, "fid_stats.safetensors"),
        st_save(
            {"mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64)},
            metadata={"count": str(fid.count), "feature_net": cfg.fid.feature_net},
        ),
    )
    return {
        "feature_net": cfg.fid.feature_net,
        "feature_dim": int(mu.shape[0]),
        "stats": "fid_stats.safetensors",
        "count": int(fid.count),
    }


def finalize(
    cfg: PrecomputeConfig,
    plan: SourcePlan,
    vae: dict,
    markers: dict[int, list[dict]],
    text_identity: dict | None,
    code_version: str,
) -> Manifest:
    """Merge the parts' failures and statistics; write failures.parquet, fid_stats and manifest.json (last)."""
    ids = [s["shard"] for s in plan.shards]
    missing = [s for s in ids if not is_complete(markers.get(s, []))]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} were not committed; rerun to resume")
    parts = [p for s in ids for p in markers[s]]
    counts = {
        "input": sum(p["rows"] for p in parts),
        "written": sum(p["written"] for p in parts),
        "failed": sum(p["failed"] for p in parts),
    }
    if (
        counts["input"] != counts["written"] + counts["failed"]
        or _write_failures(cfg.output, parts) != counts["failed"]
    ):
        raise RuntimeError(f"{cfg.output}: the committed parts do not add up ({counts}); rerun with overwrite=true")
    counts["duplicate_ids"], dup_examples = duplicate_ids(cfg.output, parts)
    latent_stats, fid = _merge_stats(cfg.output, parts, vae["latent_channels"])
    columns: dict[str, dict] = {}
    for p in parts:
        columns.update(p.get("columns") or {})
    num_classes = plan.num_classes
    if num_classes is None and plan.has_labels:
        top = max((p["max_label"] for p in parts), default=-1)
        num_classes = top + 1 if top >= 0 else None
    manifest = Manifest.from_dict(
        {
            "schema_version": SCHEMA_VERSION,
            "source": {**plan.description, **({"duplicate_id_examples": dup_examples} if dup_examples else {})},
            "image_size": cfg.image_size,
            "num_classes": num_classes,
            "classes": plan.classes,
            "counts": counts,
            "vae": vae,
            "text": {**text_identity, "null": NULL_TEXT_FILE} if text_identity is not None else None,
            "latent_stats": latent_stats,
            "fid": _fid_record(cfg, fid),
            "columns": columns,
            "data": DATA_DIR,
            "failures": "failures.parquet",
            "shards": len(ids),
            "config": to_dict(cfg),
            "code_version": code_version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        where=f"{cfg.output}/manifest.json",
    )
    manifest.write(cfg.output)
    return manifest


def multi_text_identity(specs: list, null: dict[str, np.ndarray]) -> dict:
    """The manifest's text record of a multi-encoder set: the joined dims and each encoder's slices (from the
    encoders' configs), checked against the null embedding the encoder actors actually wrote."""
    from pipelines.encoders.text import describe_parts

    layout, joined = describe_parts(specs)
    written = {
        "max_length": int(null["text_emb"].shape[0]),
        "dim": int(null["text_emb"].shape[1]),
        "pooled_dim": int(null["text_pooled"].shape[0]),
    }
    if written != joined:
        raise RuntimeError(f"the joined text embedding has sizes {written}, the encoders' configs give {joined}")
    return {"encoder": "+".join(r["name"] for r in layout), "kind": "multi", "encoders": layout, **joined}
