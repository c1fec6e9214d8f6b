"""Attribute-net training job: a few steps, held-out accuracy reported and saved, reloadable feature net."""

from __future__ import annotations

import json

import pytest
import torch

from ditcore.config import ConfigError, from_dict
from ditcore.data.builtin import BuiltinSpec, render_batch
from ditcore.metrics.features import BuiltinAttributeNet, load_feature_net
from pipelines.cli.data import main as data_main
from pipelines.encoders.train_features import TrainFeaturesConfig, _augment, train_feature_net

TINY = {"steps": 3, "batch_size": 8, "width": 8, "cell_dim": 2, "eval_images": 16, "progress": False, "threads": 1}


def test_train_save_load(tmp_path, capsys):
    out = train_feature_net(from_dict(TrainFeaturesConfig, {**TINY, "out": str(tmp_path / "fn")}))
    assert "held-out accuracy" in capsys.readouterr().out
    net = load_feature_net(out)
    assert isinstance(net, BuiltinAttributeNet) and net.feature_dim == 18
    meta = json.loads((tmp_path / "fn" / "config.json").read_text())["meta"]
    assert set(meta["accuracy"]) >= {"shape", "colour", "size", "position", "object", "scene", "caption"}
    assert all(0.0 <= v <= 1.0 for v in meta["accuracy"].values())
    assert meta["data"]["image_size"] == 32
    images = render_batch(0, 3, BuiltinSpec())["image"]
    assert net.features(images).shape == (3, 18)


def test_cli_overrides_and_errors(tmp_path, capsys):
    out = tmp_path / "fn2"
    argv = [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + [
        f"output={out}",
        "steps=1",
        "image_size=48",
    ]  # precompute-style alias
    assert data_main(["train-features", *argv]) == 0
    assert load_feature_net(out).image_size == 48
    assert data_main(["train-features", "widht=3"]) == 2
    assert "widht" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="background"):
        from_dict(TrainFeaturesConfig, {"background": "plaid"})


def test_augment_keeps_range_and_shape():
    cfg = TrainFeaturesConfig(noise_std=0.1, shift_px=2, blur_prob=1.0)
    x = torch.rand(4, 3, 32, 32)
    y = _augment(x, cfg, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_train_features_on_a_labelled_folder(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from ditcore.metrics.classifier import ImageClassifier

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for k, name in enumerate(("dark", "light")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 60, (32, 32, 3)) + 180 * k
                Image.fromarray(arr.astype(np.uint8)).save(tmp_path / split / name / f"{i}.png")
    cfg = {
        "steps": 30, "batch_size": 8, "width": 4, "feature_dim": 8, "progress": False, "threads": 1,
        "out": str(tmp_path / "fn"),
        "source": {"kind": "folder", "path": str(tmp_path / "train")},
        "test_source": {"kind": "folder", "path": str(tmp_path / "test")},
    }  # fmt: skip
    out = train_feature_net(from_dict(TrainFeaturesConfig, cfg))
    assert "test accuracy" in capsys.readouterr().out
    net = load_feature_net(out)
    assert isinstance(net, ImageClassifier) and net.feature_dim == 8 and net.classes == ["dark", "light"]
    report = json.loads((tmp_path / "fn" / "report.json").read_text())
    assert report["test_count"] == 12 and report["train_images"] == 32 and report["test_accuracy"] == 1.0
    assert json.loads((tmp_path / "fn" / "config.json").read_text())["meta"]["test_accuracy"] == 1.0
