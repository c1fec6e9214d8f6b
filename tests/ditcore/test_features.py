"""FID feature networks: Inception-v3 FID architecture (random weights), attribute net, save/load, scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditcore.data.builtin import BuiltinSpec, render_batch
from ditcore.metrics.features import (
    ATTR_ARCH,
    INCEPTION_ARCH,
    BuiltinAttributeNet,
    FIDInceptionV3,
    attribute_accuracies,
    attribute_loss,
    caption_attribute_accuracy,
    cell_targets,
    images_to_unit,
    load_feature_net,
    predict_objects,
    save_feature_net,
)
from tests.conftest import assert_load_errors_name_the_path


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    # Random BN statistics so that loading checks more than default ones/zeros.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def test_inception_matches_pytorch_fid_shapes(inception):
    # Parameter count of torchvision's Inception3(aux_logits=False, num_classes=1008) as used by pytorch-fid
    # (27,161,264 with aux + 1000 classes, minus the 3,326,696 aux parameters, plus 8 * 2049 for 1008 classes).
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960
    keys = inception.state_dict().keys()
    for k in (
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_1a_3x3.bn.running_var",
        "Mixed_5b.branch5x5_1.conv.weight",
        "Mixed_6e.branch7x7dbl_5.bn.bias",
        "Mixed_7a.branch7x7x3_4.conv.weight",
        "Mixed_7c.branch3x3dbl_3b.conv.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert k in keys
    assert inception.state_dict()["fc.weight"].shape == (1008, 2048)
    assert inception.Mixed_7b.pool == "avg" and inception.Mixed_7c.pool == "max"


def test_inception_features_and_preprocessing(inception):
    images = np.random.default_rng(0).integers(0, 256, (1, 40, 48, 3), dtype=np.uint8)
    feats = inception.features(images)
    assert feats.shape == (1, 2048) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert (feats >= 0).all()  # average of ReLU outputs
    # Same result from [-1,1] float input and from uint8 channels-first (as pytorch-fid feeds x/255).
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    torch.testing.assert_close(inception.features(x.float() / 127.5 - 1), feats, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(inception(x.float() / 255.0), feats)


def test_inception_loads_pytorch_fid_pth_and_safetensors(inception, tmp_path):
    # The released .pth has no BatchNorm num_batches_tracked entries; loading must accept that.
    state = {k: v.clone() for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, pth)
    from safetensors.torch import save_file

    st = tmp_path / "inception.safetensors"
    save_file(state, str(st))
    ref = inception.state_dict()
    for path in (pth, st):
        net = load_feature_net(path)
        assert isinstance(net, FIDInceptionV3) and not net.training
        loaded = net.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # Directory form written by save_feature_net; one forward pass to check the loaded net end to end.
    save_feature_net(inception, tmp_path / "inc")
    assert json.loads((tmp_path / "inc" / "config.json").read_text())["arch"] == INCEPTION_ARCH
    images = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    torch.testing.assert_close(load_feature_net(tmp_path / "inc").features(images), inception.features(images))
    assert set(ref) == set(load_feature_net(tmp_path / "inc").state_dict())
    # Wrong key names -> error naming the file and the missing keys.
    bad = dict(state)
    bad["Mixed_5b.extra"] = bad.pop("Mixed_5b.branch1x1.conv.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth.*missing.*Mixed_5b.branch1x1.conv.weight"):
        load_feature_net(tmp_path / "bad.pth")


def test_tf_style_pooling_ignores_padding():
    block = FIDInceptionV3().Mixed_5b
    x = torch.ones(1, 192, 5, 5)
    # With count_include_pad=False the pooled map of a constant input stays constant (border included).
    pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    assert torch.equal(pooled, x)
    assert block(x).shape == (1, 256, 5, 5)


def test_images_to_unit_conventions():
    u8 = np.full((1, 4, 4, 3), 255, np.uint8)
    assert images_to_unit(u8).shape == (1, 3, 4, 4) and float(images_to_unit(u8).min()) == 1.0
    assert float(images_to_unit(-torch.ones(1, 3, 4, 4)).max()) == 0.0
    with pytest.raises(ValueError, match="shape"):
        images_to_unit(torch.zeros(1, 4, 4, 3))  # float must be channels-first


def test_cell_targets_and_loss():
    objects = np.array([[[1, 2, 0, 4], [3, 5, 1, 8]], [[0, 0, 1, 0], [-1, -1, -1, -1]]])
    t = cell_targets(objects, num_shapes=5)
    assert t["shape"].shape == (2, 9)
    assert t["shape"][0].tolist() == [5, 5, 5, 5, 1, 5, 5, 5, 3]
    assert t["colour"][0, 4] == 2 and t["size"][0, 8] == 1 and t["colour"][0, 0] == -100
    assert t["shape"][1].tolist() == [0] + [5] * 8
    net = BuiltinAttributeNet().train()
    _, logits = net(torch.rand(2, 3, 32, 32))
    loss = attribute_loss(logits, t)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_attribute_net_shapes_save_load(tmp_path):
    torch.manual_seed(0)
    net = BuiltinAttributeNet(image_size=32, width=8, cell_dim=8).eval()
    batch = render_batch(0, 6, BuiltinSpec(image_size=32))
    feats = net.features(batch["image"])
    assert feats.shape == (6, 72)
    logits = net.attributes(batch["image"])
    assert logits["shape"].shape == (6, 9, 6) and logits["colour"].shape == (6, 9, 6)
    assert logits["size"].shape == (6, 9, 2)
    # Larger images are resized to the net's input size.
    big = render_batch(0, 2, BuiltinSpec(image_size=64))["image"]
    assert net.features(big).shape == (2, 72)
    path = save_feature_net(net, tmp_path / "fn", metadata={"accuracy": {"shape": 0.5}})
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["arch"] == ATTR_ARCH and cfg["feature_dim"] == 72 and cfg["meta"]["accuracy"]["shape"] == 0.5
    # Weights get the same (umask) permissions as the config, not owner-only.
    assert (path / "model.safetensors").stat().st_mode & 0o777 == (path / "config.json").stat().st_mode & 0o777
    loaded = load_feature_net(path)
    assert isinstance(loaded, BuiltinAttributeNet) and not loaded.training
    torch.testing.assert_close(loaded.features(batch["image"]), feats)
    # Features do not depend on batch composition (eval-mode BatchNorm).
    torch.testing.assert_close(loaded.features(batch["image"][:1]), feats[:1], rtol=1e-5, atol=1e-5)


def test_load_errors(tmp_path):
    assert_load_errors_name_the_path(load_feature_net, tmp_path, FileNotFoundError, "config.json")
    save_feature_net(BuiltinAttributeNet(width=8, cell_dim=2), tmp_path / "e")
    (tmp_path / "e" / "config.json").write_text(json.dumps({"arch": "resnet-9000"}))
    with pytest.raises(ValueError, match="resnet-9000"):
        load_feature_net(tmp_path / "e")


class _Oracle(BuiltinAttributeNet):
    """An 'attribute net' that returns the true cells, to test the scoring arithmetic."""

    def __init__(self, objects):
        super().__init__(width=8, cell_dim=2)
        self._t = cell_targets(objects, 5)

    def attributes(self, images):
        n = len(images)
        t = {k: v[:n] for k, v in self._t.items()}
        return {
            "shape": F.one_hot(t["shape"], 6).float(),
            "colour": F.one_hot(t["colour"].clamp(min=0), 6).float(),
            "size": F.one_hot(t["size"].clamp(min=0), 2).float(),
        }


def test_caption_attribute_accuracy_scoring():
    batch = render_batch(0, 20, BuiltinSpec())
    oracle = _Oracle(batch["objects"])
    assert caption_attribute_accuracy(oracle, batch["image"], batch["objects"]) == 1.0
    acc = attribute_accuracies(oracle, batch["image"], batch["objects"])
    assert acc["scene"] == 1.0 and acc["object"] == 1.0
    from ditcore.data.builtin import array_to_objects

    assert predict_objects(oracle, batch["image"]) == [
        sorted(o, key=lambda d: d["position"]) for o in array_to_objects(batch["objects"])
    ]
    # Claim every first object is a different colour: colour accuracy drops, shape stays perfect.
    wrong = batch["objects"].copy()
    wrong[:, 0, 1] = (wrong[:, 0, 1] + 1) % 6
    acc = attribute_accuracies(oracle, batch["image"], wrong)
    n_obj = int((batch["objects"][:, :, 0] >= 0).sum())
    assert acc["shape"] == 1.0 and acc["position"] == 1.0
    assert acc["colour"] == pytest.approx(1 - 20 / n_obj)
    assert acc["caption"] == pytest.approx((3 + acc["colour"]) / 4)
    # List-of-dicts input works too.
    assert caption_attribute_accuracy(oracle, batch["image"], array_to_objects(batch["objects"])) == 1.0


# ----------------------------------------------------------------------------------------- class classifier


def _stripes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 28x28 images of 3 classes (horizontal stripes, vertical stripes, a bright disc) with random phase/noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.empty((n, 28, 28), np.uint8)
    for i, c in enumerate(labels):
        period, phase = rng.integers(4, 8), rng.integers(0, 8)
        if c == 0:
            img = ((yy + phase) // (period // 2)) % 2 * 200.0
        elif c == 1:
            img = ((xx + phase) // (period // 2)) % 2 * 200.0
        else:
            cy, cx, r = rng.integers(9, 19), rng.integers(9, 19), rng.integers(5, 9)
            img = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r) * 220.0
        images[i] = np.clip(img + rng.normal(0, 25, (28, 28)), 0, 255).astype(np.uint8)
    return images, labels


def test_classifier_trains_scores_and_round_trips(tmp_path, one_thread):
    from ditcore.metrics.classifier import ImageClassifier, classification_accuracy, train_classifier

    x, y = _stripes(240, 0)
    xt, yt = _stripes(60, 1)
    net, report = train_classifier(
        x,
        y,
        classes=["h", "v", "disc"],
        test_images=xt,
        test_labels=yt,
        steps=60,
        batch_size=32,
        width=8,
        feature_dim=16,
        lr=5e-3,
        eval_every=30,
    )
    assert isinstance(net, ImageClassifier) and not net.training and net.num_classes == 3
    assert report["steps"] == 60 and [h[0] for h in report["history"]] == [30, 60]
    assert report["test"]["accuracy"] >= 0.9 and report["test"]["count"] == 60
    assert len(report["test"]["per_class"]) == 3 and np.sum(report["test"]["confusion"]) == 60
    rgb = np.repeat(xt[..., None], 3, -1)  # generated samples arrive as uint8 RGB at the data set's size
    assert net.features(rgb).shape == (60, 16)
    path = save_feature_net(net, tmp_path / "cls", metadata={"accuracy": report["test"]["accuracy"]})
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["arch"] == "image-classifier" and cfg["classes"] == ["h", "v", "disc"] and cfg["feature_dim"] == 16
    loaded = load_feature_net(path)
    assert isinstance(loaded, ImageClassifier) and loaded.classes == ["h", "v", "disc"]
    torch.testing.assert_close(loaded.logits(rgb), net.logits(rgb))
    # Accuracy arithmetic: the net's own predictions score 1, shifted labels score 0.
    pred = net.predict(rgb)
    assert classification_accuracy(net, rgb, pred)["accuracy"] == 1.0
    shifted = classification_accuracy(net, rgb, (pred + 1) % 3)
    assert shifted["accuracy"] == 0.0 and all(v in (0.0, None) for v in shifted["per_class"])


def test_classifier_input_errors():
    from ditcore.metrics.classifier import ImageClassifier, train_classifier

    x, y = _stripes(12, 0)
    with pytest.raises(ValueError, match=r"labels: 1 label\(s\) outside \[0, 3\), e.g. 7"):
        train_classifier(x, np.where(np.arange(12) == 5, 7, y), num_classes=3, steps=1)
    with pytest.raises(ValueError, match="labels: expected 12 labels"):
        train_classifier(x, y[:11], num_classes=3, steps=1)
    with pytest.raises(ValueError, match="images: expected uint8 pixels, got dtype float32"):
        train_classifier(x.astype(np.float32), y, steps=1)
    with pytest.raises(ValueError, match="test_images and test_labels"):
        train_classifier(x, y, test_images=x, steps=1)
    with pytest.raises(ValueError, match="test_labels: expected 12 labels"):
        train_classifier(x, y, test_images=x, test_labels=y[:3], steps=1)
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        ImageClassifier(3, classes=["a", "b"])


def test_inception_without_fc_and_older_configs(tmp_path):
    net = FIDInceptionV3(with_fc=False)
    assert sum(p.numel() for p in net.parameters()) == 23_850_960 - 2048 * 1008 - 1008
    assert net.config["with_fc"] is False
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "nofc.pth")
    assert not hasattr(load_feature_net(tmp_path / "nofc.pth"), "fc")  # a bare file without fc loads as such
    # Directories written before "with_fc" existed hold pytorch-fid weights, fc included.
    d = save_feature_net(FIDInceptionV3(), tmp_path / "old")
    (d / "config.json").write_text(json.dumps({"arch": INCEPTION_ARCH, "feature_dim": 2048}))
    assert load_feature_net(d).fc.weight.shape == (1008, 2048)
    (d / "config.json").write_text(json.dumps({"arch": INCEPTION_ARCH, "with_fc": False}))
    with pytest.raises(ValueError, match=r"unexpected \['fc.bias', 'fc.weight'\] \(2\), wrong shape \[\] \(0\)$"):
        load_feature_net(d)
