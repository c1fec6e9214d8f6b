"""Image preprocessing shared by every source: mode conversion to RGB, ADM/DiT center crop, uint8 <-> [-1, 1] tensors.

`center_crop_arr` reproduces the ADM reference (guided-diffusion `image_datasets.py`, also used by DiT's
`train.py`): halve with BOX filtering while the short side is at least twice the target, then one BICUBIC
resize so the short side equals the target, then a center crop. Matching it exactly matters because FID
reference statistics are computed on images prepared this way.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

WHITE = (255, 255, 255)


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """Accept a PIL image or a uint8 array [H,W], [H,W,3] or [H,W,4]."""
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image array [H,W], [H,W,3] or [H,W,4], got shape {arr.shape}")
    return Image.fromarray(arr)


def _composite_on(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Alpha-composite an image with transparency onto a solid background (transparent -> background colour)."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, background)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: palette (with transparency), alpha on white, CMYK, 16/32-bit, L, 1."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        # Palette images may carry a transparent index or a per-entry alpha table ("transparency" in info).
        if "transparency" in image.info:
            return _composite_on(image.convert("RGBA"), background)
        return image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on(image, background)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (PNG/TIFF); mode "I" from 16-bit files also spans 0..65535. Pillow's own
        # convert("L") clips instead of rescaling, which would turn most 16-bit images white.
        arr = np.asarray(image, dtype=np.float64)
        arr = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if mode == "F":
        # Float images have no fixed range; map [min, max] -> [0, 255] so the content stays visible.
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow's conversions are the standard ones.
    return image.convert("RGB")


def center_crop_arr(pil_image: Image.Image | np.ndarray, image_size: int) -> np.ndarray:
    """ADM/DiT reference resize + center crop -> uint8 [image_size, image_size, C] (C=3 for RGB input)."""
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    pil_image = _as_pil(pil_image)
    # BOX-halve while the image is at least twice the target: cheap anti-aliased downsampling (ADM).
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] (numpy or torch) -> float32 [B,3,H,W] in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected images of shape [B,H,W,3], got {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [B,3,H,W]


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float [B,3,H,W] in [-1, 1] -> uint8 numpy [B,H,W,3] (clipped, rounded); inverse of images_to_tensor."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a tensor of shape [B,3,H,W], got {tuple(x.shape)}")
    x = x.detach().float().add(1.0).mul(127.5).round().clamp(0, 255)  # [B,3,H,W]
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # [B,H,W,3]
