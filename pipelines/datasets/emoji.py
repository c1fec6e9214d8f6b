"""Google Noto emoji (Apache-2.0) as a parquet source, from the npm package emoji-datasource-google.

The package (iamcal/emoji-data, "google" image set = Noto Emoji) holds emoji.json and img/google/64/*.png:
64x64 RGBA images, one per emoji and one per skin-tone variation (3,786 in version 16.0.0). Only this Google
set is used; no other vendor's images. `fetch_emoji` writes, as described in `pipelines.datasets`:

* id: the unified code point string of the image, e.g. "1F98A" or "1F44B-1F3FD" (a skin-tone variation);
* caption: the lower-case Unicode name ("FOX FACE" -> "fox face"); when the name is empty, the first short
  name with "_"/"-" as spaces; skin-tone variations append the tone(s): "waving hand sign, medium skin tone";
* label: index of the emoji's category in classes.json (categories in Unicode order, e.g. "Smileys & Emotion");
  category: the category name;
* image: the package's PNG bytes unchanged, RGBA. The precompute (and `pipelines.datasets.read_split`)
  composite RGBA onto white with `ditcore.preprocess.to_rgb`, so transparent pixels become white.

Entries whose has_img_google flag is false are skipped and counted ("skipped_no_image"). An entry with neither a
name nor a short name, or whose image is missing from the package or does not decode, is not written and is
recorded under "failures" (id + reason) in the return value and metadata.json: the fetch does not stop for it.

Splits: `test_fraction` of the emoji of each category (default 0.1) go to test/, the rest to train/. A base
emoji and its skin-tone variations always land in the same split, so test images are not recoloured copies of
train images. test_fraction=0 writes train/ only.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines.datasets import FetchError, stratified_order, write_documents, write_source

NPM_PACKAGE = "emoji-datasource-google"
NPM_VERSION = "16.0.0"
PACK_COMMAND = f"npm pack {NPM_PACKAGE}@{NPM_VERSION}"
IMAGE_DIR = "img/google/64"
# CLDR names of the Fitzpatrick modifiers, as Unicode names skin-tone variations.
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("caption", pa.string()),
        ("label", pa.int32()),
        ("category", pa.string()),
    ]
)
LICENSE_NOTE = """Emoji images: Google Noto Emoji (https://github.com/googlefonts/noto-emoji), as packaged in the npm
package emoji-datasource-google (https://github.com/iamcal/emoji-data). Noto Emoji's image resources are under the
Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0); Noto states that its flag images
(third_party/region-flags) are in the public domain or otherwise exempt from copyright.
The emoji metadata (emoji.json: names, short names, categories) is from emoji-data, MIT License,
Copyright (c) 2013 Cal Henderson.
Only the Google set is used here; other vendors' images (Apple, Twitter, Facebook) have other terms.
"""


# ----------------------------------------------------------------------------------------------- obtaining


def npm_pack(dest: Path) -> Path:
    """Download the package tarball into `dest` with `npm pack`; FetchError naming the command on failure."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            f"npm is not available to download {NPM_PACKAGE}. Install Node.js/npm, or run "
            f"`{PACK_COMMAND}` elsewhere and pass --tarball <the .tgz file>"
        )
    try:
        proc = subprocess.run(
            [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}"],
            cwd=dest,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(
            f"`{PACK_COMMAND}` could not run ({exc}); run it yourself and pass --tarball <the .tgz file>"
        ) from exc
    tgz = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not tgz:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        what = f"exit code {proc.returncode}" if proc.returncode != 0 else "it wrote no .tgz"
        raise FetchError(
            f"`{PACK_COMMAND}` failed ({what}): {' | '.join(tail)}. Run it yourself and pass --tarball <the .tgz file>"
        )
    return tgz[0]


class _Package:
    """The package files we need, from a .tgz (npm pack) or an unpacked folder (e.g. node_modules/<package>)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._files: dict[str, bytes] | None = None
        if path.is_dir():
            return
        if not path.is_file():
            raise FileNotFoundError(f"emoji package not found: {path}")
        # One sequential pass over the stream: random access into a .tgz would re-inflate it for every file.
        self._files = {}
        try:
            with tarfile.open(path, "r|*") as tar:
                for m in tar:
                    # npm tarballs put everything under "package/"; index files by their path below it.
                    rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
                    if m.isfile() and (rel in ("emoji.json", "package.json") or rel.startswith(IMAGE_DIR + "/")):
                        f = tar.extractfile(m)
                        self._files[rel] = f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as exc:  # not a tarball, or truncated
            raise ValueError(f"{path}: not a readable package tarball: {exc}") from exc

    def read(self, rel: str) -> bytes | None:
        """Bytes of the file at `rel` (relative to the package root), or None if absent."""
        if self._files is not None:
            return self._files.get(rel)
        f = self.path / rel
        return f.read_bytes() if f.is_file() else None


# ----------------------------------------------------------------------------------------------- entries


def _caption(entry: dict[str, Any]) -> str | None:
    """Lower-case name, else the first short name with separators as spaces, else None."""
    name = (entry.get("name") or "").strip()
    if name:
        return name.lower()
    shorts = [s for s in (entry.get("short_names") or [entry.get("short_name")]) if s]
    if shorts:
        return str(shorts[0]).replace("_", " ").replace("-", " ").strip().lower() or None
    return None


def emoji_images(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One record per Google image (entries and their skin-tone variations) + the count without one.

    Record keys: id, image (file name), caption (None if the entry has no name), category, group (the base
    entry's unified id, shared by its variations).
    """
    records, skipped = [], 0
    for e in entries:
        base_caption = _caption(e)
        variants = [(e, None)] + [(v, k) for k, v in sorted((e.get("skin_variations") or {}).items())]
        for v, tones in variants:
            if not v.get("has_img_google"):
                skipped += 1
                continue
            caption = base_caption
            if caption is not None and tones:
                caption += ", " + ", ".join(SKIN_TONES.get(t, t.lower()) for t in tones.split("-"))
            records.append(
                {
                    "id": str(v.get("unified") or ""),
                    "image": v.get("image"),
                    "caption": caption,
                    "category": e.get("category"),
                    "group": str(e.get("unified") or ""),
                }
            )
    return records, skipped


def _categories(entries: list[dict[str, Any]]) -> list[str]:
    """Category names in Unicode order (by the smallest sort_order of their emoji)."""
    first: dict[str, float] = {}
    for e in entries:
        c = e.get("category")
        if c:
            first[c] = min(first.get(c, float("inf")), float(e.get("sort_order", float("inf"))))
    return sorted(first, key=lambda c: (first[c], c))


def _check_png(data: bytes) -> str | None:
    """None if the bytes decode as an image, else the reason."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:  # PIL decode errors
        return f"image does not decode: {type(exc).__name__}: {exc}"
    return None


def _split_groups(records: list[dict[str, Any]], categories: list[str], test_fraction: float, seed: int) -> set[str]:
    """Base-emoji groups that go to test: round(test_fraction * groups) per category, chosen by a seeded shuffle."""
    if test_fraction <= 0:
        return set()
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for c in categories:
        groups = sorted({r["group"] for r in records if r["category"] == c})
        k = round(test_fraction * len(groups))
        test.update(groups[i] for i in rng.permutation(len(groups))[:k])
    return test


# ----------------------------------------------------------------------------------------------- fetch


def fetch_emoji(
    out: str,
    tarball: str | None = None,
    install: bool = True,
    *,
    test_fraction: float = 0.1,
    seed: int = 0,
    rows_per_file: int = 1000,
    overwrite: bool = False,
) -> dict:
    """Write the Google emoji images as a parquet source under `out` (train/, test/, classes.json, metadata.json).

    tarball: the package .tgz (or an unpacked package folder); None downloads it with `npm pack` if `install`.
    Returns {"out", "classes", "splits": {split: {"count", "per_class"}}, "per_class", "skipped_no_image",
    "failures": [{"id", "reason"}]}.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    download = None
    if tarball is None:
        if not install:
            raise FileNotFoundError(f"no emoji package given: run `{PACK_COMMAND}` and pass --tarball <the .tgz file>")
        download = Path(tempfile.mkdtemp(prefix="ditscale-emoji-"))
    try:
        pkg = _Package(npm_pack(download) if download is not None else Path(tarball))
        return _write(pkg, Path(out), test_fraction, seed, rows_per_file, overwrite)
    finally:
        if download is not None:
            shutil.rmtree(download, ignore_errors=True)


def _load_entries(pkg: _Package) -> tuple[list[dict[str, Any]], str | None]:
    raw = pkg.read("emoji.json")
    if raw is None:
        raise ValueError(f"{pkg.path}: no emoji.json in the package")
    try:
        entries = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{pkg.path}: emoji.json is not valid JSON: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{pkg.path}: emoji.json must be a list of objects")
    version = None
    meta = pkg.read("package.json")
    if meta is not None:
        try:
            version = json.loads(meta).get("version")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            version = None
    return entries, version


def _usable(pkg: _Package, records: list[dict[str, Any]], cat_index: dict[str, int]) -> tuple[list, list]:
    """(records with their PNG bytes under "png", failures [{"id", "reason"}]) in record order."""
    failures: list[dict[str, str]] = []
    good = []
    seen: set[str] = set()
    for r in records:
        reason = None
        if not r["id"]:
            reason = "entry has no unified code point"
        elif r["id"] in seen:
            reason = "duplicate unified code point"
        elif r["caption"] is None:
            reason = "entry has neither a name nor a short name"
        elif r["category"] not in cat_index:
            reason = "entry has no category"
        elif not r["image"]:
            reason = "entry names no image file"
        else:
            data = pkg.read(f"{IMAGE_DIR}/{r['image']}")
            reason = f"{IMAGE_DIR}/{r['image']} is missing from the package" if data is None else _check_png(data)
            r["png"] = data
        if reason:
            failures.append({"id": r["id"], "reason": reason})
            continue
        seen.add(r["id"])
        good.append(r)
    return good, failures


def _split_columns(good: list[dict[str, Any]], test_groups: set[str], cat_index: dict[str, int], seed: int):
    """(split, parquet columns in stratified order) for train and test; an empty split is left out."""
    for split in ("train", "test"):
        rows = [r for r in good if (r["group"] in test_groups) == (split == "test")]
        if not rows:
            continue
        labels = np.array([cat_index[r["category"]] for r in rows], np.int32)
        order = stratified_order(labels, seed + (0 if split == "train" else 1))
        rows = [rows[i] for i in order]
        yield (
            split,
            {
                "id": [r["id"] for r in rows],
                "image": [r["png"] for r in rows],
                "caption": [r["caption"] for r in rows],
                "label": labels[order],
                "category": [r["category"] for r in rows],
            },
        )


def _write(pkg: _Package, out: Path, test_fraction: float, seed: int, rows_per_file: int, overwrite: bool) -> dict:
    entries, version = _load_entries(pkg)
    categories = _categories(entries)
    cat_index = {c: i for i, c in enumerate(categories)}
    records, skipped = emoji_images(entries)
    good, failures = _usable(pkg, records, cat_index)
    if not good:
        raise ValueError(f"{pkg.path}: no usable Google emoji images ({skipped} without one, {len(failures)} failed)")
    test_groups = _split_groups(good, categories, test_fraction, seed)
    total = Counter(r["category"] for r in good)
    per_class = {c: total.get(c, 0) for c in categories}
    summary = {"per_class": per_class, "skipped_no_image": skipped, "failures": failures}

    def finish(tmp: Path, written: dict) -> dict:
        splits = {}
        for split, (cols, _) in written.items():
            counts = Counter(cols["category"])
            splits[split] = {"count": len(cols["id"]), "per_class": {c: counts.get(c, 0) for c in categories}}
        metadata = {
            "name": "noto-emoji",
            "source": f"npm {NPM_PACKAGE}@{version or 'unknown'} ({IMAGE_DIR}/*.png, emoji.json)",
            "license": "images Apache-2.0 (Google Noto Emoji); metadata MIT (emoji-data); see LICENSE",
            "image": {
                "format": "PNG, RGBA as shipped",
                "size": 64,
                "rgba": "the precompute composites onto white (ditcore.preprocess.to_rgb)",
            },
            "columns": {
                "id": "unified code point string",
                "image": "PNG bytes",
                "caption": "lower-case name",
                "label": "int32 index into classes.json",
                "category": "category name",
            },
            "order": f"stratified shuffle (seed {seed} for train, {seed + 1} for test)",
            "split": f"test_fraction {test_fraction} of the base emoji of each category (variations follow "
            f"their base emoji), seed {seed}",
            "classes": categories,
            "splits": splits,
            **summary,
        }
        readme = (
            "# Noto emoji (parquet source)\n\nGoogle Noto Emoji images (Apache-2.0) from the npm package "
            f"`{NPM_PACKAGE}`; see LICENSE. ",
            ". Images are 64x64 RGBA PNGs (composited onto white by the precompute); labels index classes.json "
            "(categories). Point the precompute at one split, e.g. source.path=<this folder>/train "
            "source.id_column=id.\n",
        )
        write_documents(tmp, categories, metadata, LICENSE_NOTE, readme, splits)
        return splits

    splits = write_source(
        out, overwrite, _split_columns(good, test_groups, cat_index, seed), SCHEMA, rows_per_file, finish
    )
    return {"out": str(out), "classes": categories, "splits": splits, **summary}
