"""Real image data sets laid out as parquet sources the precompute reads (`source.kind: parquet`).

* `fashion_mnist.fetch_fashion_mnist`: Fashion-MNIST (Zalando, MIT) from the Debian package dataset-fashion-mnist.
* `emoji.fetch_emoji`: Google Noto emoji images (Apache-2.0) from the npm package emoji-datasource-google.

Layout of `out/`: one folder per split (`train/`, `test/`) of `part-NNNNN.parquet` files with columns
id (string, stable across runs), image (PNG bytes), caption (string), label (int32) (+ dataset-specific ones),
plus classes.json (class names, list index = label), metadata.json (source, license, counts, order) and
LICENSE / README.md. Point the precompute at one split folder, e.g. `source.path=out/train`, with
`source.id_column=id` (otherwise ids are "<file>:<row>").

Rows are in a seeded *stratified* shuffled order: each class is spread evenly through the file sequence, so a
prefix (`source.limit`) holds every class in about its overall proportion. Everything is written into a hidden
temporary folder beside `out` and renamed into place at the end, so an interrupted fetch leaves no partial data.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.infra.staging import staged_dir

ROWS_PER_FILE = 5000
# Small row groups: the parquet source plans one shard per ~256 rows from whole row groups.
ROW_GROUP_SIZE = 500


class FetchError(RuntimeError):
    """A data set could not be obtained (a tool is missing or failed); the message names the command to run."""


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so that `pipelines.datasets` imports cheaply and the submodules can import this module."""
    if name == "fetch_fashion_mnist":
        from pipelines.datasets.fashion_mnist import fetch_fashion_mnist

        return fetch_fashion_mnist
    if name == "fetch_emoji":
        from pipelines.datasets.emoji import fetch_emoji

        return fetch_emoji
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------- order


def stratified_order(labels: Sequence[int] | np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of range(len(labels)) that spreads every class evenly through the sequence.

    Item r (in a seeded shuffle) of a class with n items gets the key (r + u) / n, u ~ U(0, 1); sorting by key
    interleaves the classes so that any prefix holds each class in about its overall proportion.
    """
    lab = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(lab), dtype=np.float64)
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        ranks = rng.permutation(len(idx))
        keys[idx] = (ranks + rng.random(len(idx))) / len(idx)
    return np.argsort(keys, kind="stable")


# ----------------------------------------------------------------------------------------------- writing


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """Losslessly PNG-encode a uint8 array [H,W] (grey), [H,W,3] or [H,W,4], or a PIL image."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_split(
    folder: Path, columns: dict[str, list | np.ndarray], schema: pa.Schema, rows_per_file: int = ROWS_PER_FILE
) -> list[str]:
    """Write columns (already in final row order) as folder/part-00000.parquet, ...; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)
    names = []
    for i, start in enumerate(range(0, table.num_rows, rows_per_file)):
        name = f"part-{i:05d}.parquet"
        pq.write_table(
            table.slice(start, rows_per_file), folder / name, row_group_size=ROW_GROUP_SIZE, compression="zstd"
        )
        names.append(name)
    return names


def write_json(path: Path, obj: Any) -> None:
    """Pretty JSON with a trailing newline (UTF-8, non-ASCII kept readable)."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_out(out: Path, overwrite: bool) -> None:
    """FileExistsError if `out` is a file, or a folder with content and not `overwrite`."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {out} is not empty; remove it or pass --overwrite")


def write_source(
    out: Path,
    overwrite: bool,
    splits: Iterable[tuple[str, dict[str, list | np.ndarray]]],
    schema: pa.Schema,
    rows_per_file: int,
    finish: Callable[[Path, dict[str, tuple[dict, list[str]]]], Any],
) -> Any:
    """Build a parquet source in a staging folder and publish it to `out`; nothing is left half-written.

    `splits` yields (split name, columns in final row order); each is written with `write_split`. Then
    `finish(staging folder, {split: (columns, file names)})` adds the documents (see `write_documents`), and
    its return value is returned after the folder is moved into place.
    """
    _check_out(out, overwrite)
    with staged_dir(out) as tmp:
        written = {
            split: (columns, write_split(tmp / split, columns, schema, rows_per_file)) for split, columns in splits
        }
        result = finish(tmp, written)
    return result


def write_documents(
    folder: Path, classes: Sequence[str], metadata: dict, license_text: str, readme: tuple[str, str], splits: dict
) -> None:
    """classes.json, metadata.json, LICENSE and README.md of a source; the README lists the splits' image counts

    between its two parts: readme = (text before "Splits: ...", text after it).
    """
    write_json(folder / "classes.json", list(classes))
    write_json(folder / "metadata.json", metadata)
    (folder / "LICENSE").write_text(license_text)
    listing = ", ".join(f"{s}/ ({v['count']} images)" for s, v in splits.items())
    (folder / "README.md").write_text(f"{readme[0]}Splits: {listing}{readme[1]}")


# ----------------------------------------------------------------------------------------------- reading


def read_split(folder: str | os.PathLike, image_size: int, limit: int | None = None) -> dict[str, Any]:
    """Decode a split folder as the precompute does (to_rgb on white, ADM center crop) into arrays.

    Returns {"image": uint8 [N,S,S,3], "label": int64 [N], "id": list, "caption": list}; files in sorted
    order, rows in file order, first `limit` rows only if given. For training the class classifier.
    """
    from ditcore.preprocess import center_crop_arr
    from pipelines.imaging import display_rgb

    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no .parquet files in {folder}")
    images, labels, ids, captions = [], [], [], []
    for f in files:
        table = pq.read_table(f, columns=["id", "image", "caption", "label"])
        for rid, data, cap, lab in zip(*(table.column(c).to_pylist() for c in ("id", "image", "caption", "label"))):
            if limit is not None and len(ids) >= limit:
                break
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                rgb = display_rgb(img)  # as the precompute decodes
            if min(rgb.size) < image_size:
                raise ValueError(
                    f"{f}: image {rid} is {rgb.size[0]}x{rgb.size[1]}, below image_size {image_size} "
                    "(the precompute does not upscale)"
                )
            images.append(center_crop_arr(rgb, image_size))
            labels.append(int(lab))
            ids.append(rid)
            captions.append(cap)
    return {"image": np.stack(images), "label": np.asarray(labels, np.int64), "id": ids, "caption": captions}
