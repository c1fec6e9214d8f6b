"""Concept steering: directions from class means, PCA, and the forward hooks that read and steer block states."""

from __future__ import annotations

import pytest
import torch

from ditcore.models import build_model
from ditcore.steering import (
    Steer,
    capture_features,
    concept_directions,
    mid_layer,
    pca_2d,
    steering,
    transformer_blocks,
)


def _perturbed(preset: str):
    torch.manual_seed(0)
    m = build_model(preset).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _inputs(preset: str, b: int = 3):
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(b, 4, 8, 8, generator=g), torch.rand(b, generator=g)
    if preset.startswith("DiT"):
        return x, t, {"y": torch.arange(b)}
    return (
        x,
        t,
        {
            "text_emb": torch.randn(b, 16, 32, generator=g),
            "text_mask": torch.ones(b, 16, dtype=torch.bool),
            "text_pooled": torch.randn(b, 32, generator=g),
        },
    )


def test_directions_are_differences_of_class_means():
    g = torch.Generator().manual_seed(0)
    d = 6
    m_red, m_blue = torch.randn(d, generator=g) * 3, torch.randn(d, generator=g) * 3
    red = m_red + 0.01 * torch.randn(200, d, generator=g)
    blue = m_blue + 0.01 * torch.randn(300, d, generator=g)
    feats = torch.cat([red, blue])
    labels = ["red"] * 200 + ["blue"] * 300
    out = concept_directions(feats, labels)
    assert torch.allclose(out["directions"]["red"], m_red - m_blue, atol=0.01)
    assert torch.allclose(out["directions"]["blue"], m_blue - m_red, atol=0.01)
    assert out["norm"]["red"] == pytest.approx(float((m_red - m_blue).norm()), rel=1e-2)
    # multi-label rows (a caption naming two colours) count for both; a concept on every row has no direction
    multi = concept_directions(torch.eye(3), [["red", "blue"], ["red"], ["red", "green"]])["directions"]
    assert set(multi) == {"blue", "green"}
    assert torch.allclose(multi["blue"], torch.tensor([1.0, -0.5, -0.5]))
    with pytest.raises(ValueError, match="2 labels for 3"):
        concept_directions(torch.eye(3), ["a", "b"])


def test_pca_recovers_the_dominant_plane():
    g = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    z = torch.randn(4000, 10, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0] + [0.1] * 8)
    coords, comps, explained = pca_2d((z @ basis.T).float())
    assert abs(float(comps[0].double() @ basis[:, 0])) > 0.999
    assert abs(float(comps[1].double() @ basis[:, 1])) > 0.999
    assert float(explained.sum()) > 0.98 and coords.shape == (4000, 2)


@pytest.mark.parametrize("preset", ["DiT-T/2", "MMDiT-T", "MMDiT-T-flux"])
def test_steering_adds_alpha_v_to_the_block_state_and_is_removed_after(preset):
    model = _perturbed(preset)
    x, t, cond = _inputs(preset)
    layer = mid_layer(model)
    assert 0 <= layer < len(transformer_blocks(model))
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x, t, **cond)
        with capture_features(model, layer) as plain:
            model(x, t, **cond)
        with steering(model, v, 2.5, layer), capture_features(model, layer) as steered:
            out = model(x, t, **cond)
        # the capture hook runs after the steering hook: it sees the state moved by exactly alpha * v
        assert torch.allclose(steered[0] - plain[0], 2.5 * v.expand(3, -1), atol=1e-4)
        assert not torch.allclose(out, ref, atol=1e-4)
        assert torch.equal(model(x, t, **cond), ref)  # hooks removed on exit
        with steering(model, v, 0.0, layer):
            assert torch.allclose(model(x, t, **cond), ref, atol=1e-6)


def test_joint_block_steering_leaves_the_text_stream_alone():
    model = _perturbed("MMDiT-T")
    x, t, cond = _inputs("MMDiT-T")
    block = transformer_blocks(model)[0]
    seen = []
    v = torch.ones(model.config.hidden_size)
    with torch.no_grad():
        for alpha in (0.0, 1.0):
            with steering(model, v, alpha, 0):  # the observer below runs after the steering hook
                h = block.register_forward_hook(lambda _m, _i, out: seen.append(out))
                model(x, t, **cond)
                h.remove()
    (img0, txt0), (img1, txt1) = seen
    assert torch.allclose(img1 - img0, torch.ones_like(img0), atol=1e-5)
    assert torch.equal(txt0, txt1)


def test_bad_steering_inputs_name_the_value():
    model = _perturbed("DiT-T/2")
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        with steering(model, torch.zeros(64), 1.0, 7):
            pass
    with pytest.raises(ValueError, match=r"must be \[64\]"):
        with steering(model, torch.zeros(5), 1.0, 0):
            pass
    with pytest.raises(ValueError, match="steer must be"):
        Steer.from_dict({"concept": "red"})
    with pytest.raises(ValueError, match="steer must be"):
        Steer.from_dict({"concept": "red", "alpha": 1, "scale": 2})
    assert Steer.from_dict({"concept": "red", "alpha": 1}) == Steer("red", 1.0, None)
