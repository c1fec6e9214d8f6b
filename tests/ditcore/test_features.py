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
    for k in ("Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Mixed_5b.branch5x5_1.conv.weight",
              "Mixed_6e.branch7x7dbl_5.bn.bias", "Mixed_7a.branch7x7x3_4.conv.weight",
              "Mixed_7c.branch3x3dbl_3b.conv.weight", "fc.weight", "fc.bias"):
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
    assert logits["shape"].shape == (6, 9, 6) and logits["colour"].shape == (6, 9, 6) and logits["size"].shape == (6, 9, 2)
    # Larger images are resized to the net's input size.
    big = render_batch(0, 2, BuiltinSpec(image_size=64))["image"]
    assert net.features(big).shape == (2, 72)
    path = save_feature_net(net, tmp_path / "fn", metadata={"accuracy": {"shape": 0.5}})
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["arch"] == ATTR_ARCH and cfg["feature_dim"] == 72 and cfg["meta"]["accuracy"]["shape"] == 0.5
    loaded = load_feature_net(path)
    assert isinstance(loaded, BuiltinAttributeNet) and not loaded.training
    torch.testing.assert_close(loaded.features(batch["image"]), feats)
    # Features do not depend on batch composition (eval-mode BatchNorm).
    torch.testing.assert_close(loaded.features(batch["image"][:1]), feats[:1], rtol=1e-5, atol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_feature_net(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_feature_net(tmp_path / "d")
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
