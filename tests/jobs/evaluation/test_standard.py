"""Standard FID and class accuracy: a checkpoint scored with another network against reference statistics of real
train images, beside the floor of real test images at the same sample count; samples classified by a classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from ditcore.metrics.classifier import train_classifier
from ditcore.metrics.features import save_feature_net
from jobs.evaluation.fid import FIDSettings, evaluate_checkpoint
from jobs.evaluation.standard import standard_fid
from tests.jobs._train_helpers import make_eval_dataset, perturbed_model, save_model_checkpoint

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]


def _folder(root, n_per_class: int, seed: int) -> str:
    """A 4-class image folder (class sub-folders): noisy discs of one colour per class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    for c, colour in enumerate(COLOURS):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n_per_class):
            img = np.full((32, 32, 3), 255, np.uint8)
            cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 9)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return str(root)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("standard")
    data, assets = make_eval_dataset(root, n=16, num_classes=4)
    train = _folder(root / "train", 24, 0)
    test = _folder(root / "test", 8, 1)
    # perturbed: samples depend on the weights
    model = perturbed_model("DiT-T/2", scale=0.02, num_classes=4, input_size=8, in_channels=4)
    ckpt = save_model_checkpoint(root / "ckpt" / "step_00000001", model, {"manifest": data}, state={"step": 1})
    imgs = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "train").glob("*/*.png"))])
    labels = np.repeat(np.arange(4), 24)
    net, rep = train_classifier(imgs, labels, num_classes=4, steps=30, batch_size=32, width=8, feature_dim=16)
    clf = save_feature_net(net, root / "classifier")
    return {"data": data, "ckpt": ckpt, "assets": assets, "train": train, "test": test, "clf": str(clf)}


def test_standard_fid_sits_above_the_floor_of_real_test_images(setup, tmp_path):
    settings = FIDSettings(num_samples=24, sampler="euler", steps=2, guidance=2.0)
    res = standard_fid(
        setup["ckpt"], setup["data"], inception=setup["assets"]["feature_net"], train_source=setup["train"],
        test_source=setup["test"], settings=settings, n_ref=96, n_boot=5, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert res["n_samples"] == 24 and res["reference_count"] == 96 and res["fid_network"] and res["n_boot"] == 5
    assert res["floor"]["n_samples"] == 24 and math.isfinite(res["floor"]["fid"])
    assert res["fid_ci"][0] <= res["fid_ci"][1] and res["fid_se"] >= 0
    # An untrained model's noise is farther from the real images than real test images are.
    assert res["fid"] > res["floor"]["fid"]
    (cached,) = list((tmp_path / "cache").glob("ref-*.npz"))  # the reference statistics are cached
    assert not list((tmp_path / "cache").glob("*.tmp"))
    # A cache file torn by a kill mid-write was a BadZipFile on every rerun: it is computed (and written) again.
    from jobs.evaluation.standard import reference_stats
    from pipelines.latents.manifest import Manifest

    args = (setup["assets"]["feature_net"], setup["train"], int(Manifest.read(setup["data"]).image_size), 96)
    good = reference_stats(*args, cache_dir=str(tmp_path / "cache"))  # read from the cache
    cached.write_bytes(cached.read_bytes()[:100])
    again = reference_stats(*args, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(again["mu"], good["mu"]) and again["count"] == good["count"] == 96
    assert cached.stat().st_size > 100
    # Images replaced at the same path are other data: their statistics are computed, not read from the cache.
    import shutil

    moved = tmp_path / "train"
    shutil.copytree(setup["train"], moved)
    first = reference_stats(args[0], str(moved), *args[2:], cache_dir=str(tmp_path / "cache"))
    shutil.rmtree(moved)
    _folder(moved, 24, 5)  # other discs at the same path
    second = reference_stats(args[0], str(moved), *args[2:], cache_dir=str(tmp_path / "cache"))
    fresh = reference_stats(args[0], str(moved), *args[2:], cache_dir=None)
    assert np.array_equal(second["mu"], fresh["mu"]) and not np.array_equal(second["mu"], first["mu"])
    # Another network at the same path (an Inception converted again) is another network: its statistics were read
    # from the old one's cache.
    net_dir = tmp_path / "net"
    shutil.copytree(args[0], net_dir)
    old_net = reference_stats(str(net_dir), *args[1:], cache_dir=str(tmp_path / "cache"))
    shutil.rmtree(net_dir)
    shutil.copytree(setup["clf"], net_dir)
    from jobs.evaluation.fid import feature_net

    feature_net.cache_clear()  # a later run is another process: it loads the network on the path anew
    new_net = reference_stats(str(net_dir), *args[1:], cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(new_net["mu"], reference_stats(str(net_dir), *args[1:], cache_dir=None)["mu"])
    assert new_net["mu"].shape != old_net["mu"].shape or not np.array_equal(new_net["mu"], old_net["mu"])
    # The network is the one that ran (this data set's small feature net), not always "FID Inception-v3".
    assert "not the standard FID Inception" in res["network"] and "Inception-v3 (TF" not in res["network"]
    assert res["reference_few_samples_warning"] is None and res["feature_dim"] < 96
    # Fewer reference images than feature dimensions: a singular reference covariance, said (as for the samples).
    few = standard_fid(
        setup["ckpt"], setup["data"], inception=setup["assets"]["feature_net"], train_source=setup["train"],
        test_source=setup["test"], settings=settings, n_ref=res["feature_dim"] - 1, n_boot=2,
    )  # fmt: skip
    assert few["reference_count"] == res["feature_dim"] - 1 and few["reference_few_samples_warning"]


def test_class_accuracy_of_samples_under_a_classifier(setup):
    settings = FIDSettings(num_samples=24, sampler="euler", steps=2, guidance=1.0)
    res = evaluate_checkpoint(setup["ckpt"], setup["data"], settings, num_actors=0, classifier=setup["clf"])
    assert 0.0 <= res["class_acc"] <= 1.0 and len(res["class_acc_per_class"]) == 4
    assert res["fid_se"] >= 0 and res["fid_n_boot"] == 50 and res["few_samples_warning"] is None  # 24 >= 18 dims
    with_clf = FIDSettings(**settings.__dict__).key("net", setup["clf"])
    assert with_clf != settings.key("net")  # the classifier is part of the cache key


def test_evaluate_takes_a_classifier_of_at_least_the_data_sets_classes(setup, tmp_path):
    """Scoring needs every label of the data set among the classifier's classes; one of more classes is fine (it
    was refused, as train's eval.classifier takes it)."""
    import argparse

    from ditcore.metrics.classifier import ImageClassifier
    from jobs.cli.evaluate import _check_before_sampling
    from pipelines.generation import SamplerSettings

    for classes in (3, 6):
        path = str(save_feature_net(ImageClassifier(classes, image_size=8), tmp_path / f"c{classes}"))
        args = argparse.Namespace(classifier=path, checkpoint=setup["ckpt"])
        check = lambda: _check_before_sampling(args, setup["ckpt"], setup["data"], SamplerSettings())  # noqa: E731
        if classes < 4:
            with pytest.raises(ValueError, match="knows only 3 classes, the data set .* has 4"):
                check()
        else:
            check()
