"""DiT / MM-DiT: presets, shapes, adaLN-Zero init, layers, padding-mask invariance, configs (U-Net: test_unet.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ditcore.flops import example_inputs
from ditcore.models import (
    PRESETS,
    DiT,
    DiTConfig,
    MMDiT,
    MMDiTConfig,
    UNet,
    UNetConfig,
    build_model,
    config_from_dict,
    config_to_dict,
)
from ditcore.models.layers import apply_rope, patchify, rope_2d_freqs, sincos_pos_embed_2d, unpatchify
from tests.ditcore._models import assert_padding_changes_nothing, padded_text_inputs, randomize

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = ["DiT-T/2", "DiT-T/4", "MMDiT-T", "MMDiT-T-flux", "MMDiT-d1"]


def test_preset_table_matches_papers():
    expected = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    for size, (depth, hidden, heads) in expected.items():
        for p in (2, 4, 8):
            cfg = PRESETS[f"DiT-{size}/{p}"]
            assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (depth, hidden, heads, p)
    for d in range(1, 25):
        cfg = PRESETS[f"MMDiT-d{d}"]
        assert (cfg.depth, cfg.hidden_size, cfg.num_heads) == (d, 64 * d, d)


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("MMDiT")])
def test_mmdit_preset_shapes_on_meta(name):
    cfg = PRESETS[name]
    with torch.device("meta"):
        model = build_model(cfg)
    out = model(**example_inputs(cfg, batch_size=2, text_tokens=77, device="meta"))
    assert out.shape == (2, cfg.in_channels, cfg.input_size, cfg.input_size)


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("DiT")])
def test_dit_preset_shapes_on_meta_with_learn_sigma(name):
    with torch.device("meta"):
        model = build_model(name, learn_sigma=True, input_size=16)
    out = model(**example_inputs(model.config, batch_size=2, device="meta"))
    assert out.shape == (2, 8, 16, 16)
    assert model.out_channels == 8 and model.in_channels == 4


@pytest.mark.parametrize("name", TINY)
def test_fresh_model_outputs_exact_zeros_and_blocks_are_identity(name):
    torch.manual_seed(0)
    model = build_model(name)
    inputs = example_inputs(model.config, batch_size=3)
    out = model(**inputs)
    assert out.shape == inputs["x"].shape
    assert torch.count_nonzero(out) == 0
    d = model.config.hidden_size
    c_act = torch.randn(3, d)
    x = torch.randn(3, 16, d)
    if isinstance(model, DiT):
        for block in model.blocks:
            assert torch.equal(block(x, c_act), x)
    else:
        txt = torch.randn(3, 5, d)
        for block in model.joint_blocks:
            img_out, txt_out = block(x, txt, c_act)
            assert torch.equal(img_out, x)
            assert txt_out is None or torch.equal(txt_out, txt)
        for block in model.single_blocks:
            assert torch.equal(block(x, c_act), x)


def test_dit_other_latent_size_channels_and_rope():
    model = build_model("DiT-T/2", in_channels=16, input_size=16, pos_embed="rope", qk_norm=True, learn_sigma=True)
    randomize(model)
    x = torch.randn(2, 16, 16, 16)
    out = model(x, torch.rand(2), torch.tensor([0, 1000]))  # 1000 = null class
    assert out.shape == (2, 32, 16, 16)
    assert torch.isfinite(out).all()
    # Sampling at a different resolution than the config recomputes the positional tables.
    assert model(torch.randn(1, 16, 24, 24), torch.rand(1), torch.tensor([3])).shape == (1, 32, 24, 24)


def test_wrong_channel_count_names_the_shape():
    model = build_model("DiT-T/2")
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), torch.tensor([0]))
    # A t of another batch size (it broadcast into a bare RuntimeError, or silently for t of size 1).
    with pytest.raises(ValueError, match=r"t must be \[B=2\] or a scalar, got shape \(3,\)"):
        model(torch.randn(2, 4, 8, 8), torch.rand(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"got shape \(1,\)"):
        model(torch.randn(2, 4, 8, 8), torch.rand(1), torch.tensor([0, 1]))
    assert model(torch.randn(2, 4, 8, 8), torch.tensor(0.5), torch.tensor([0, 1])).shape[0] == 2


def test_patchify_unpatchify_round_trip():
    x = torch.randn(2, 3, 12, 8)
    for p in (1, 2, 4):
        tokens = patchify(x, p)
        assert tokens.shape == (2, (12 // p) * (8 // p), p * p * 3)
        assert torch.equal(unpatchify(tokens, p, 3, 12, 8), x)
    # Token i covers patch (row, col) = divmod(i, W/p): check one patch explicitly.
    tokens = patchify(x, 4)
    patch = x[:, :, 4:8, 4:8]  # row 1, col 1 of a 3x2 grid -> token 3
    assert torch.equal(tokens[:, 3].reshape(2, 4, 4, 3).permute(0, 3, 1, 2), patch)


def test_sincos_pos_embed_matches_reference_formula():
    emb = sincos_pos_embed_2d(8, 2, 3)
    assert emb.shape == (6, 8)
    # token 4 = (row 1, col 1); first half encodes the column, second half the row.
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2.0)
    ref = torch.cat([torch.sin(1 * omega), torch.cos(1 * omega), torch.sin(1 * omega), torch.cos(1 * omega)])
    torch.testing.assert_close(emb[4].double(), ref, rtol=0, atol=1e-6)


def test_rope_depends_only_on_relative_position():
    torch.manual_seed(0)
    d = 16
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)

    def logit(pq, pk):
        cos, sin = rope_2d_freqs(d, torch.tensor([pq[0], pk[0]]), torch.tensor([pq[1], pk[1]]))
        rq = apply_rope(q, cos[:1], sin[:1])
        rk = apply_rope(k, cos[1:], sin[1:])
        return (rq * rk).sum().item()

    a = logit((1, 2), (3, 5))
    assert a == pytest.approx(logit((4, 0), (6, 3)), abs=1e-5)  # same offset (2, 3)
    assert a == pytest.approx(logit((10, 10), (12, 13)), abs=1e-5)
    assert abs(a - logit((1, 2), (3, 6))) > 1e-3  # another column offset
    assert abs(a - logit((1, 2), (4, 5))) > 1e-3  # another row offset
    # Rotation preserves norms.
    cos, sin = rope_2d_freqs(d, torch.tensor([7]), torch.tensor([3]))
    torch.testing.assert_close(apply_rope(q, cos, sin).norm(), q.norm())


@pytest.mark.parametrize("name", ["MMDiT-T", "MMDiT-T-flux", "MMDiT-d1"])
def test_mmdit_padding_never_changes_the_image_output(name):
    torch.manual_seed(0)
    model = build_model(name, input_size=8) if name == "MMDiT-d1" else build_model(name)
    randomize(model)
    inputs = padded_text_inputs(model.config)
    ref = model(**inputs)
    assert_padding_changes_nothing(model, inputs, ref)
    # ... while a real token does change it.
    real = dict(inputs)
    emb2 = inputs["text_emb"].clone()
    emb2[0, 0] += 1.0
    real["text_emb"] = emb2
    assert (model(**real) - ref).abs().max() > 1e-6


def test_config_round_trip_and_errors():
    for name in ("DiT-XL/2", "MMDiT-d12", "MMDiT-T-flux", "UNet-B", "UNet-T-text"):
        cfg = PRESETS[name]
        d = config_to_dict(cfg)
        assert d["arch"] == {"DiT": "dit", "MMD": "mmdit", "UNe": "unet"}[name[:3]]
        assert config_from_dict(d) == cfg
    with pytest.raises(ValueError, match="hidden_sise"):
        config_from_dict({"arch": "dit", "hidden_sise": 3})
    with pytest.raises(ValueError, match="depth"):
        config_from_dict({"arch": "dit", "depth": "12"})
    with pytest.raises(ValueError, match="arch"):
        config_from_dict({"depth": 2})
    with pytest.raises(ValueError, match="'unet'"):
        config_from_dict({"arch": "resnet"})  # the error lists the known archs
    with pytest.raises(ValueError, match="mup_depth"):
        config_from_dict({"arch": "mmdit", "mup_depth": 1})
    with pytest.raises(ValueError, match="DiT-Q/2"):
        build_model("DiT-Q/2")
    with pytest.raises(ValueError, match="num_heads"):
        build_model("DiT-T/2", num_heads=3)
    with pytest.raises(ValueError, match="pos_embed"):
        build_model("DiT-T/2", pos_embed="learned")
    with pytest.raises(ValueError, match="nope"):
        build_model("DiT-T/2", nope=1)


def test_build_model_accepts_name_config_and_dict():
    a = build_model("MMDiT-T", depth=3)
    b = build_model(dataclasses.replace(PRESETS["MMDiT-T"], depth=3))
    c = build_model({**config_to_dict(PRESETS["MMDiT-T"]), "depth": 3})
    assert isinstance(a, MMDiT) and a.config == b.config == c.config
    assert isinstance(a.config, MMDiTConfig) and a.config.depth == 3
    assert a.cond_keys == ("text_emb", "text_mask", "text_pooled")
    dit = build_model("DiT-T/2")
    assert isinstance(dit.config, DiTConfig) and dit.cond_keys == ("y",)
    unet = build_model({**config_to_dict(PRESETS["UNet-T"]), "num_res_blocks": 2})
    assert isinstance(unet, UNet) and isinstance(unet.config, UNetConfig) and unet.config.num_res_blocks == 2
    assert unet.cond_keys == ("y",) and build_model("UNet-T-text").cond_keys == a.cond_keys
    # Configs written before the depth-muP fields existed still load, with depth-muP off.
    old = {k: v for k, v in config_to_dict(PRESETS["DiT-T/2"]).items() if not k.startswith("mup_")}
    assert config_from_dict(old) == PRESETS["DiT-T/2"] and not PRESETS["DiT-T/2"].mup_depth
    # Presets are immutable: a derived config never changes the table.
    assert PRESETS["MMDiT-T"].depth == 2


@pytest.mark.parametrize("mup", [False, True])
def test_param_groups_cover_every_parameter_once(mup):
    model = build_model("MMDiT-T-flux", mup=mup, mup_base_width=32)
    groups = model.param_groups(1e-3, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    by_name = {g["name"]: g for g in groups}
    assert by_name["vector"]["weight_decay"] == 0.0
    m = 64 / 32 if mup else 1.0
    assert by_name["hidden"]["lr"] == pytest.approx(1e-3 / m)
    assert by_name["hidden"]["weight_decay"] == pytest.approx(0.1 * m)
    assert by_name["output"]["lr"] == pytest.approx(1e-3)
    torch.optim.AdamW(groups)  # accepted as-is


def test_model_trains_a_step_and_backprops_everywhere():
    torch.manual_seed(0)
    model = build_model("MMDiT-T-flux")
    opt = torch.optim.AdamW(model.param_groups(1e-3))
    inputs = example_inputs(model.config, batch_size=2, text_tokens=6)
    for _ in range(2):
        loss = (model(**inputs) - inputs["x"]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.count_nonzero(model(**inputs)) > 0


@pytest.mark.parametrize(
    ("ratio", "message"),
    [
        (0.001, r"mlp_ratio=0.001 x hidden_size=64 gives an MLP of width 0"),
        (float("nan"), r"mlp_ratio must be a finite number > 0, got nan"),
    ],
)
def test_an_mlp_ratio_that_leaves_no_mlp_is_refused(ratio, message):
    with pytest.raises(ValueError, match=message):
        build_model("DiT-T/2", mlp_ratio=ratio)
