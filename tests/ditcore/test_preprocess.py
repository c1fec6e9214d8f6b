"""Preprocessing: RGB conversion of every common PIL mode, ADM center crop, tensor round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ditcore.preprocess import center_crop_arr, images_to_tensor, tensor_to_images, to_rgb


def _noise(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_center_crop_matches_reference_steps_with_box_halving():
    img = Image.fromarray(_noise(200, 300))  # PIL size (300, 200)
    out = center_crop_arr(img, 32)
    # Expected chain written out by hand: 300x200 -> BOX 150x100 -> BOX 75x50 (50 < 64 stops) -> BICUBIC 48x32.
    ref = img.resize((150, 100), Image.BOX).resize((75, 50), Image.BOX).resize((48, 32), Image.BICUBIC)
    expected = np.array(ref)[:, 8:40]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_center_crop_without_box_and_portrait():
    img = Image.fromarray(_noise(100, 60, seed=1))  # portrait, PIL size (60, 100); 60 < 64 -> no BOX
    out = center_crop_arr(img, 32)
    ref = np.array(img.resize((32, 53), Image.BICUBIC))  # round(100 * 32/60) = 53
    np.testing.assert_array_equal(out, ref[10:42])


def test_center_crop_accepts_arrays_and_upsamples_small_images():
    out = center_crop_arr(_noise(20, 24), 32)
    assert out.shape == (32, 32, 3)
    same = _noise(64, 64)
    np.testing.assert_array_equal(center_crop_arr(same[..., :3], 64), same)  # identity at target size
    with pytest.raises(ValueError, match="shape"):
        center_crop_arr(np.zeros((4, 4, 2), np.uint8), 2)


def test_rgb_and_grayscale_modes():
    rgb = Image.fromarray(_noise(8, 8))
    assert to_rgb(rgb) is rgb
    gray = Image.fromarray(np.full((8, 8), 77, np.uint8))
    out = np.array(to_rgb(gray))
    assert out.shape == (8, 8, 3) and (out == 77).all()
    bw = Image.new("1", (8, 8), 1)
    assert (np.array(to_rgb(bw)) == 255).all()


def test_alpha_is_composited_on_white():
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255  # red
    arr[:2, :, 3] = 255  # top half opaque, bottom half transparent
    arr[2:, :, 3] = 0
    out = np.array(to_rgb(Image.fromarray(arr)))
    assert (out[:2] == (255, 0, 0)).all() and (out[2:] == 255).all()
    la = Image.fromarray(np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 128, np.uint8)], -1)).convert("LA")
    out = np.array(to_rgb(la))
    assert out.shape == (4, 4, 3) and np.allclose(out, 127, atol=1)  # half black over white


def test_palette_with_and_without_transparency():
    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8))
    pal = rgb.quantize(colors=2)
    np.testing.assert_array_equal(np.array(to_rgb(pal)), np.array(rgb))
    # Make the palette index used by the blue pixel transparent and round-trip through PNG like a real file.
    blue_index = int(np.array(pal)[0, 1])
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=blue_index)
    loaded = Image.open(io.BytesIO(buf.getvalue()))
    assert loaded.mode == "P" and "transparency" in loaded.info
    out = np.array(to_rgb(loaded))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)


def test_cmyk():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan, full magenta+yellow -> red
    out = np.array(to_rgb(cmyk))
    assert out.shape == (4, 4, 3) and tuple(out[0, 0]) == (255, 0, 0)


def test_sixteen_bit_is_rescaled_not_clipped():
    img16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert img16.mode == "I;16"
    img32 = img16.convert("I")
    buf = io.BytesIO()
    img16.save(buf, format="PNG")  # a real 16-bit file too
    for im in (img16, img32, Image.open(io.BytesIO(buf.getvalue()))):
        out = np.array(to_rgb(im))
        assert out.shape == (1, 3, 3), im.mode
        np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_tensor_round_trip():
    imgs = np.stack([_noise(8, 6, seed=s) for s in range(3)])
    x = images_to_tensor(imgs)
    assert x.shape == (3, 3, 8, 6) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert float(images_to_tensor(np.full((1, 1, 1, 3), 255, np.uint8)).min()) == 1.0
    np.testing.assert_array_equal(tensor_to_images(x), imgs)
    np.testing.assert_array_equal(tensor_to_images(torch.full((1, 3, 2, 2), 5.0)), np.full((1, 2, 2, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(imgs.astype(np.float32))
