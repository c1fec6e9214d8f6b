"""The data's own FID floor (pipelines.datasets.floor.fid_floor) on small image folders written here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save

from ditcore.metrics.classifier import ImageClassifier
from ditcore.metrics.features import load_feature_net, save_feature_net
from ditcore.metrics.fid import feature_stats, frechet_distance_sqrtm
from pipelines.datasets.floor import fid_floor
from pipelines.datasets.images import load_source_images
from pipelines.latents.manifest import FIDRecord, Manifest

CLASSES = ("a", "b")


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, n_per_class: int, seed: int, base: tuple[int, int, int]) -> Path:
    """root/<class>/<i>.png: noisy images around a colour per class (class b: base colour inverted)."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(CLASSES):
        colour = np.array(base if k == 0 else [255 - v for v in base], np.float64)
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            (root / c / f"{i:03d}.png").write_bytes(_png(img))
    return root


def _net(path: Path, feature_dim: int = 6) -> Path:
    torch.manual_seed(0)
    return save_feature_net(ImageClassifier(2, image_size=32, width=4, feature_dim=feature_dim), path)


def _features(net_dir: Path, images: np.ndarray) -> np.ndarray:
    return load_feature_net(net_dir).features(images).double().numpy()


def _dataset(tmp: Path, net_dir: Path, train: Path, fid: bool = True) -> str:
    """A latent data set directory holding only what the floor reads: the manifest and the FID statistics."""
    out = tmp / "latents"
    out.mkdir()
    record = None
    if fid:
        images = load_source_images(train, 32)["image"]
        mu, sigma = feature_stats(_features(net_dir, images))
        (out / "fid_stats.safetensors").write_bytes(save({"mu": mu, "sigma": sigma}))
        record = FIDRecord(
            feature_net=str(net_dir), feature_dim=len(mu), stats="fid_stats.safetensors", count=len(images)
        )
    Manifest(image_size=32, num_classes=2, fid=record).write(str(out))
    return str(out)


@pytest.fixture()
def data(tmp_path):
    train = _folder(tmp_path / "train", 40, 0, (200, 60, 30))
    test = _folder(tmp_path / "test", 20, 1, (200, 60, 30))
    other = _folder(tmp_path / "other", 20, 2, (30, 200, 90))  # a different distribution
    net = _net(tmp_path / "net")
    return {"train": train, "test": test, "other": other, "net": net, "uri": _dataset(tmp_path, net, train)}


def test_floor_is_the_fid_of_real_test_images(data):
    res = fid_floor(data["uri"], str(data["test"]), 40)
    assert res["n_samples"] == res["requested_samples"] == 40
    assert res["feature_net"] == str(data["net"]) and res["feature_dim"] == 6 and res["reference_count"] == 80
    # The same number computed independently: every test image decoded with PIL, the net, scipy's sqrtm.
    files = sorted(Path(data["test"]).glob("*/*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    ref = load_source_images(data["train"], 32)["image"]
    expected = frechet_distance_sqrtm(
        *feature_stats(_features(data["net"], images)), *feature_stats(_features(data["net"], ref))
    )
    assert res["fid"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # Real images of another distribution are far above the data's own floor.
    assert fid_floor(data["uri"], str(data["other"]), 40)["fid"] > 20 * res["fid"]
    assert res["few_samples_warning"] is None


def test_floor_sample_count_and_bootstrap(data):
    small = fid_floor(data["uri"], str(data["test"]), 12, n_boot=20)
    assert small["n_samples"] == 12 and small["se"] > 0 and small["ci"][0] <= small["ci"][1]
    # Fewer images than features: the result carries the warning.
    assert "6 feature dimensions" in fid_floor(data["uri"], str(data["test"]), 4)["few_samples_warning"]
    with pytest.raises(ValueError, match=r"40 readable images, fewer than n_samples=64"):
        fid_floor(data["uri"], str(data["test"]), 64)
    res = fid_floor(data["uri"], str(data["test"]), 64, allow_fewer=True)
    assert (res["n_samples"], res["requested_samples"]) == (40, 64)


def test_floor_bad_inputs_name_the_problem(data, tmp_path):
    with pytest.raises(ValueError, match=r"gives 5-d features .* are 6-d"):
        fid_floor(data["uri"], str(data["test"]), 10, feature_net=str(_net(tmp_path / "net5", feature_dim=5)))
    with pytest.raises(FileNotFoundError, match="missing-split"):
        fid_floor(data["uri"], str(tmp_path / "missing-split"), 10)
    no_fid = tmp_path / "nofid"
    no_fid.mkdir()
    uri = _dataset(no_fid, data["net"], data["train"], fid=False)
    with pytest.raises(ValueError, match="records no FID feature net"):
        fid_floor(uri, str(data["test"]), 10)


def test_unreadable_images_among_the_first_n_are_replaced_by_later_ones(data, tmp_path):
    """The limit was applied before decoding: three too-small images among the first n left fewer than n, and the
    floor refused a split whose readable images were enough."""
    import shutil

    split = tmp_path / "with-small"
    shutil.copytree(data["test"], split)
    for rel in ("a/000.png", "b/000.png", "a/001.png"):
        (split / rel).write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))  # below image_size 32: not readable
    res = fid_floor(data["uri"], str(split), 37)
    assert res["n_samples"] == 37
    with pytest.raises(ValueError, match=r"37 readable images, fewer than n_samples=38"):
        fid_floor(data["uri"], str(split), 38)
