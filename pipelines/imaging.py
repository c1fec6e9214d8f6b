"""One decoded image as the data pipelines read it: upright as displayed, any mode to 8-bit RGB, transparency on
white. The precompute's decoding and the real-data readers (`pipelines.datasets.read_split`) share it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ditcore.preprocess import WHITE, to_rgb

# EXIF Orientation (tag 0x0112) -> the transpose that shows the image upright (as ImageOps.exif_transpose does)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright(img: Image.Image) -> Image.Image:
    """`img` turned by its EXIF Orientation. Unlike ImageOps.exif_transpose this never writes the EXIF block back,
    which raised struct.error / TypeError on malformed entries of an otherwise readable photo; an orientation that
    cannot be read leaves the image as stored."""
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the pixels are still the image
        return img
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return img.transpose(method) if method is not None else img


def display_rgb(img: Image.Image) -> Image.Image:
    """`img` as it displays, in 8-bit RGB: EXIF orientation applied (a camera's rotated photo comes out upright),
    `ditcore.preprocess.to_rgb` for the mode (palette, alpha on white, CMYK, 16-bit, float), and a colour-key
    transparency (a PNG tRNS chunk on an RGB, grayscale or 16-bit grayscale image, which `to_rgb` does not see)
    composited on white like an alpha channel."""
    up = upright(img)
    key = up.info.get("transparency")
    rgb = to_rgb(up)
    if key is None or up.mode in ("P", "PA", "RGBA", "LA", "RGBa", "La"):  # to_rgb composites these itself
        return rgb
    src = np.asarray(up)
    k = np.asarray(key)
    if not np.issubdtype(k.dtype, np.integer) or k.ndim != (1 if src.ndim == 3 else 0):
        return rgb  # a key of a shape or kind this image cannot carry: nothing to composite
    if src.dtype == np.uint8 and int(k.max()) > 255:  # a 16-bit file's key; Pillow reads its pixels as 8-bit
        k = k >> 8
    k = k.astype(src.dtype)
    keyed = np.all(src[..., : k.size] == k, axis=-1) if src.ndim == 3 else src == k
    if not keyed.any():
        return rgb
    out = np.asarray(rgb).copy()
    out[keyed] = WHITE
    return Image.fromarray(out)
