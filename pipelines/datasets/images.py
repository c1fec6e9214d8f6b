"""Any precompute source decoded into in-memory arrays, prepared exactly as the precompute prepares images.

The encoders (`ditscale data train-vae`, `train-features`, `classifier`) and the data floor (`floor.py`) need the
same pixels the precompute turns into latents and FID features: the source is planned with
`pipelines.sources.plan_source` (the seeded shuffled shard order, `source.limit` cut across classes), each shard is
read with `read_shard` and decoded with the precompute's own `decode_batch` (to_rgb on white, size check, ADM
center crop). Rows that fail to decode are counted and skipped, never raised. Everything runs in this process: no
Ray, so a few thousand small images load in seconds.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from pipelines.infra import storage
from pipelines.sources import SourceConfig, plan_source, read_shard


def source_from_path(path: str | os.PathLike, **overrides: Any) -> SourceConfig:
    """A SourceConfig for a path: parquet when it is (or directly holds) .parquet files, else an image folder.

    A parquet source whose first file has an `id` column uses it as the row id (as the fetchers write).
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    uri = str(path)
    fs, root = storage.get_fs(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"source path does not exist: {uri}")
    if info.type == pafs.FileType.File:
        files = [root] if root.endswith(".parquet") else []
    else:
        listing = fs.get_file_info(pafs.FileSelector(root, recursive=False))
        files = sorted(i.path for i in listing if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        return SourceConfig(**{"kind": "folder", "path": uri, **overrides})
    with fs.open_input_file(files[0]) as fh:
        names = pq.read_schema(fh).names
    kw: dict[str, Any] = {"kind": "parquet", "path": uri, "id_column": "id" if "id" in names else None}
    return SourceConfig(**{**kw, **overrides})


def _classes_file(uri: str) -> list[str] | None:
    """classes.json in the source folder or its parent (the fetchers' layout: out/classes.json, out/train/)."""
    if storage.is_s3(uri) or not os.path.isdir(uri):
        return None
    for folder in (uri, os.path.dirname(os.path.abspath(uri))):
        f = os.path.join(folder, "classes.json")
        if os.path.isfile(f):
            names = json.loads(open(f, encoding="utf-8").read())
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                return names
    return None


def load_source_images(
    source: SourceConfig | str | os.PathLike, image_size: int, limit: int | None = None
) -> dict[str, Any]:
    """Decode a source into {"image" uint8 [N,S,S,3], "label" int64 [N] (-1: none), "id", "caption" (lists),
    "classes" (names or None), "num_classes" (or None), "failed" (rows skipped), "failures" (first 5 (id, reason)),
    "source" (the SourceConfig used)}.

    `limit` (if given) overrides `source.limit`: the first `limit` items of the shuffled order. FileNotFoundError
    names a missing path; ValueError says so when no row decodes (e.g. every image is below `image_size`).
    """
    from pipelines.precompute.encode import decode_batch

    cfg = source if isinstance(source, SourceConfig) else source_from_path(source)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        cfg = SourceConfig(**{**cfg.__dict__, "limit": int(limit)})
    plan = plan_source(cfg, image_size)
    images, labels, ids, captions, failures = [], [], [], [], []
    failed = 0
    # A WebDataset plan is one shard per tar, its sample count unknown until read: the limit is met while reading.
    left = cfg.limit if cfg.kind == "webdataset" else None
    for desc in plan.shards:
        if left is not None:
            if left <= 0:
                break
            desc = dict(desc, take=left)
        rows = decode_batch(read_shard(desc, cfg, plan.classes), image_size, require_captions=False)
        if left is not None:
            left -= len(rows["id"])
        ok = np.array([not e for e in rows["error"]], dtype=bool)
        failed += int((~ok).sum())
        failures += [(str(i), str(e)) for i, e in zip(rows["id"][~ok], rows["error"][~ok])][: 5 - len(failures)]
        images.append(rows["image"][ok])
        labels.append(np.asarray(rows["label"])[ok])
        ids += [str(x) for x in rows["id"][ok]]
        captions += [str(c) if h else None for c, h in zip(rows["caption"][ok], rows["has_caption"][ok])]
    if not ids:
        why = f"; e.g. {failures[0][0]}: {failures[0][1]}" if failures else ""
        raise ValueError(f"source {cfg.path or cfg.kind}: no image could be read at image_size {image_size}{why}")
    classes = plan.classes or (_classes_file(cfg.path) if cfg.path else None)
    label = np.concatenate(labels).astype(np.int64)
    num_classes = len(classes) if classes else (int(label.max()) + 1 if (label >= 0).any() else None)
    return {
        "image": np.concatenate(images).astype(np.uint8),
        "label": label,
        "id": ids,
        "caption": captions,
        "classes": list(classes) if classes else None,
        "num_classes": num_classes,
        "failed": failed,
        "failures": failures,
        "source": cfg,
    }


def load_readable_images(source: SourceConfig | str | os.PathLike, image_size: int, n: int) -> dict[str, Any]:
    """`load_source_images` of the first `n` items that decode: a few more are read (5%, at least 16) so that an
    unreadable or too-small image among the first n does not leave fewer than n when readable ones follow."""
    data = load_source_images(source, image_size, limit=int(n) + max(16, int(n) // 20))
    keep = min(int(n), len(data["id"]))
    return {
        **data,
        "image": data["image"][:keep],
        "label": data["label"][:keep],
        "id": data["id"][:keep],
        "caption": data["caption"][:keep],
    }
