"""One decoded image as the data pipelines read it: upright as displayed, any mode to 8-bit RGB, transparency on
white. The precompute's decoding and the real-data readers (`pipelines.datasets.read_split`) share it."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from ditcore.preprocess import WHITE, to_rgb


def display_rgb(img: Image.Image) -> Image.Image:
    """`img` as it displays, in 8-bit RGB: EXIF orientation applied (a camera's rotated photo comes out upright),
    `ditcore.preprocess.to_rgb` for the mode (palette, alpha on white, CMYK, 16-bit, float), and a colour-key
    transparency (a PNG tRNS chunk on an RGB, grayscale or 16-bit grayscale image, which `to_rgb` does not see)
    composited on white like an alpha channel."""
    up = ImageOps.exif_transpose(img)
    key = up.info.get("transparency")
    rgb = to_rgb(up)
    if key is None or up.mode in ("P", "PA", "RGBA", "LA", "RGBa", "La"):  # to_rgb composites these itself
        return rgb
    src = np.asarray(up)
    if src.ndim == 3:  # a colour key (r, g, b) matches all of a pixel's channels
        keyed = np.all(src[..., : len(key)] == np.asarray(key, dtype=src.dtype), axis=-1) if np.ndim(key) else None
    else:
        keyed = src == key if np.ndim(key) == 0 else None
    if keyed is None or not keyed.any():
        return rgb
    out = np.asarray(rgb).copy()
    out[keyed] = WHITE
    return Image.fromarray(out)
