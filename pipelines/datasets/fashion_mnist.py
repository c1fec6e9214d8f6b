"""Fashion-MNIST (Zalando Research, MIT) as a parquet source, from the Debian package dataset-fashion-mnist.

The package installs the four original IDX files (gzip) under /usr/share/datasets/fashion-mnist/: 60,000 train
and 10,000 test 28x28 grayscale images, 10 balanced classes. `fetch_fashion_mnist` parses them (magic numbers,
dimensions, sizes and label range checked) and writes out/train/ and out/test/ as described in
`pipelines.datasets`, with captions such as "a photo of a sneaker".

Size: the precompute never upscales (an image smaller than its crop size is a failed row), so the 28x28 images
are padded by default with 2 px of black -- the background colour of Fashion-MNIST -- to 32x32, a size the VAE
and DiT patch grids divide. Padding adds no detail and loses none (the LeNet-5 treatment of MNIST).
`image_size=28` keeps the originals. PNGs are single-channel ("L"); the precompute converts them to RGB.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from ditcore.files import file_digest
from pipelines.datasets import (
    FetchError,
    png_bytes,
    stratified_order,
    write_documents,
    write_source,
)

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
APT_PACKAGE = "dataset-fashion-mnist"
INSTALL_COMMAND = f"apt-get install -y {APT_PACKAGE}"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CAPTIONS = (
    "a photo of a t-shirt",
    "a photo of trousers",
    "a photo of a pullover",
    "a photo of a dress",
    "a photo of a coat",
    "a photo of a sandal",
    "a photo of a shirt",
    "a photo of a sneaker",
    "a photo of a bag",
    "a photo of an ankle boot",
)
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("caption", pa.string()), ("label", pa.int32())])
LICENSE_TEXT = """The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and
to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS
IN THE SOFTWARE.
"""


# ----------------------------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    """File content, gunzipped when it starts with the gzip magic; ValueError naming the file if it is damaged."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:  # truncated or corrupt gzip stream
        raise ValueError(f"{path}: damaged gzip data: {exc}") from exc


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes with the given magic number -> uint8 array.

    ValueError naming the file for: a wrong magic number, a header shorter than its dimensions, or a payload
    that is shorter (truncated) or longer than the dimensions say.
    """
    p = Path(path)
    data = _read_bytes(p)
    if len(data) < 4:
        raise ValueError(f"{p}: too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"{p}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IDX_IMAGES_MAGIC else 'labels'} file)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{p}: truncated IDX header ({len(data)} bytes, need {header} for {ndim} dimensions)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload < expected:
        raise ValueError(f"{p}: truncated: dimensions {dims} need {expected} data bytes, file has {payload}")
    if payload > expected:
        raise ValueError(f"{p}: {payload - expected} unexpected bytes after the {expected} data bytes of {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _locate(source: Path, name: str) -> Path | None:
    """The file `name` in `source`, or its uncompressed twin (name without .gz)."""
    for candidate in (source / name, source / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _missing(source: Path) -> list[str]:
    return [n for pair in FILES.values() for n in pair if _locate(source, n) is None]


def install_package() -> None:
    """Install the Debian package with apt-get; FetchError naming the command when apt is missing or fails."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise FetchError(
            f"apt-get is not available to install {APT_PACKAGE}. On Debian/Ubuntu run `sudo {INSTALL_COMMAND}`; "
            "elsewhere put the four IDX .gz files of https://github.com/zalandoresearch/fashion-mnist in a folder "
            "and pass --source-dir <folder>"
        )
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise FetchError(f"installing {APT_PACKAGE} needs root: run `sudo {INSTALL_COMMAND}`, then fetch again")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            [apt, "install", "-y", APT_PACKAGE], capture_output=True, text=True, env=env, timeout=1800, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"`{INSTALL_COMMAND}` could not run ({exc}); run it yourself, then fetch again") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise FetchError(
            f"`{INSTALL_COMMAND}` failed with exit code {proc.returncode}: {' | '.join(tail)}. "
            f"Run `apt-get update && {INSTALL_COMMAND}` yourself, then fetch again"
        )


def read_fashion_mnist(
    source_dir: str | os.PathLike | None = None, install: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (uint8 [60000,28,28], uint8 labels [60000]), "test": (...)} from the IDX files.

    source_dir None: the Debian package's folder, installed with apt-get first if missing and `install`.
    """
    source = Path(source_dir) if source_dir is not None else Path(DEFAULT_SOURCE_DIR)
    missing = _missing(source)
    if missing and source_dir is None and install:
        install_package()
        missing = _missing(source)
    if missing:
        hint = (
            f"install the package (`{INSTALL_COMMAND}`) or pass --source-dir <folder>"
            if source_dir is None
            else "expected the four original IDX files there"
        )
        raise FileNotFoundError(f"Fashion-MNIST files missing in {source}: {', '.join(missing)} ({hint})")
    out = {}
    for split, (img_name, lab_name) in FILES.items():
        img_path, lab_path = _locate(source, img_name), _locate(source, lab_name)
        assert img_path is not None and lab_path is not None
        images = read_idx(img_path, IDX_IMAGES_MAGIC)
        labels = read_idx(lab_path, IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
        if len(labels) and int(labels.max()) >= len(CLASSES):
            raise ValueError(f"{lab_path}: label {int(labels.max())} outside 0..{len(CLASSES) - 1}")
        out[split] = (images, labels)
    return out


# ----------------------------------------------------------------------------------------------- fetch


def fetch_fashion_mnist(
    out: str,
    source_dir: str | None = None,
    install: bool = True,
    *,
    image_size: int = 32,
    seed: int = 0,
    rows_per_file: int = 5000,
    overwrite: bool = False,
) -> dict:
    """Write Fashion-MNIST as a parquet source under `out` (train/, test/, classes.json, metadata.json).

    source_dir None reads the Debian package's folder and, if its files are missing and `install`, runs
    `apt-get install -y dataset-fashion-mnist` first; an explicit source_dir is only read. Returns
    {"out", "classes", "image_size", "splits": {split: {"count", "per_class": {class name: count}}}}.
    `image_size` 28 keeps the originals; larger sizes pad with black (see the module docstring).
    """
    if image_size < 28:
        raise ValueError(f"image_size={image_size}: Fashion-MNIST images are 28x28 and are padded, never cropped")
    data = read_fashion_mnist(source_dir, install)
    source = Path(source_dir) if source_dir is not None else Path(DEFAULT_SOURCE_DIR)
    out_path = Path(out)
    columns = (
        (split, _split_columns(split, images, labels, image_size, seed)) for split, (images, labels) in data.items()
    )

    def finish(tmp: Path, written: dict) -> dict:
        splits = {}
        for split, (cols, files) in written.items():
            counts = Counter(int(c) for c in cols["label"])
            splits[split] = {
                "count": len(cols["label"]),
                "files": len(files),
                "per_class": {CLASSES[c]: counts.get(c, 0) for c in range(len(CLASSES))},
            }
        inputs = {p.name: file_digest(p) for pair in FILES.values() for n in pair if (p := _locate(source, n))}
        readme = (
            "# Fashion-MNIST (parquet source)\n\nZalando Research's Fashion-MNIST "
            "(https://github.com/zalandoresearch/fashion-mnist), MIT license (see LICENSE), from the Debian package "
            f"`{APT_PACKAGE}`. ",
            f". Images are {image_size}x{image_size} grayscale PNGs; labels index classes.json. "
            "Point the precompute at one split, e.g. source.path=<this folder>/train source.id_column=id.\n",
        )
        write_documents(tmp, CLASSES, _metadata(inputs, image_size, seed, splits), LICENSE_TEXT, readme, splits)
        return splits

    splits = write_source(out_path, overwrite, columns, SCHEMA, rows_per_file, finish)
    return {
        "out": str(out_path),
        "classes": list(CLASSES),
        "image_size": image_size,
        "splits": {s: {"count": v["count"], "per_class": v["per_class"]} for s, v in splits.items()},
    }


def _split_columns(split: str, images: np.ndarray, labels: np.ndarray, image_size: int, seed: int) -> dict:
    """One split's parquet columns: images centred on a black canvas, in stratified order."""
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{split} images are {images.shape[1:]}, expected 28x28")
    lo = (image_size - 28) // 2
    order = stratified_order(labels, seed + (0 if split == "train" else 1))
    canvas = np.zeros((image_size, image_size), np.uint8)  # black border = Fashion-MNIST background
    pngs = []
    for i in order:
        canvas[lo : lo + 28, lo : lo + 28] = images[i]
        pngs.append(png_bytes(canvas))
    lab = labels[order].astype(np.int32)
    return {
        "id": [f"fmnist-{split}-{i:05d}" for i in order],
        "image": pngs,
        "caption": [CAPTIONS[c] for c in lab],
        "label": lab,
    }


def _metadata(inputs: dict[str, str], image_size: int, seed: int, splits: dict) -> dict:
    return {
        "name": "fashion-mnist",
        "source": f"Debian package {APT_PACKAGE} (Zalando Research, https://github.com/zalandoresearch/fashion-mnist)",
        "license": "MIT (Copyright (c) 2017 Zalando SE); see LICENSE",
        "input_files_sha256": inputs,
        "image": {
            "format": "PNG, 8-bit grayscale (L)",
            "size": image_size,
            "original_size": 28,
            "padding": f"28x28 centred on a black {image_size}x{image_size} canvas" if image_size > 28 else "none",
        },
        "columns": {
            "id": "fmnist-<split>-<index in the original IDX file>",
            "image": "PNG bytes",
            "caption": "a photo of a <class>",
            "label": "int32 index into classes.json",
        },
        "order": f"stratified shuffle (seed {seed} for train, {seed + 1} for test): every prefix holds every "
        "class in about equal numbers",
        "classes": list(CLASSES),
        "captions": list(CAPTIONS),
        "splits": splits,
    }
