"""ADM U-Net: shapes, zero init, conditioning, text padding, FLOPs vs FlopCounterMode, configs, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from ditcore.checkpoint import load_checkpoint, save_checkpoint, step_dir
from ditcore.flops import count_params, example_inputs, flops_summary, forward_macs, measured_forward_macs
from ditcore.models import PRESETS, UNet, UNetConfig, build_model, config_from_dict, config_to_dict, resolve_config
from ditcore.models.unet import ResBlock, SelfAttention, unet_plan
from ditcore.objectives import ObjectiveConfig, loss
from ditcore.samplers import model_fn_from_model
from tests.ditcore._models import assert_padding_changes_nothing, padded_text_inputs, randomize

UNET_PRESETS = [n for n in PRESETS if n.startswith("UNet-")]
TEXT_KEYS = ("text_emb", "text_mask", "text_pooled")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_preset_table():
    for size, (ch, blocks) in {"S": (64, 2), "B": (128, 2), "L": (192, 3)}.items():
        for name in (f"UNet-{size}", f"UNet-{size}-text"):
            cfg = PRESETS[name]
            assert isinstance(cfg, UNetConfig) and cfg.arch == "unet"
            assert (cfg.hidden_size, cfg.num_res_blocks, cfg.channel_mult) == (ch, blocks, (1, 2, 2))
            assert cfg.attention_levels == (1, 2) and cfg.head_channels == 64
        assert PRESETS[f"UNet-{size}"].num_classes == 1000 and PRESETS[f"UNet-{size}"].text_dim == 0
        assert PRESETS[f"UNet-{size}-text"].num_classes == 0 and PRESETS[f"UNet-{size}-text"].text_dim == 384
    # Wider is bigger: the grid is ordered by size at every latent size.
    for latent in (8, 16, 32):
        macs = [forward_macs(f"UNet-{s}", latent_size=latent) for s in "SBL"]
        assert macs[0] < macs[1] < macs[2]


def test_plan_skips_match_and_resolution_returns():
    stem, down, middle, up = unet_plan(PRESETS["UNet-B"])
    # ADM: n res blocks per level plus one downsample between levels; n + 1 res blocks per level on the way up.
    assert len(down) == 3 * 2 + 2 and len(up) == 3 * 3 and len(middle) == 2
    assert sum(s.resample == "down" for s in down) == 2 and sum(s.resample == "up" for s in up) == 2
    assert stem == 128 and up[-1].channels == 128 and middle[0].ds == 4 and up[-1].ds == 1
    assert [s.attn for s in down if s.res_in] == [False, False, True, True, True, True]


@pytest.mark.parametrize("name", ["UNet-T", "UNet-T-text"])
def test_fresh_model_outputs_exact_zeros_and_residual_blocks_are_identity(name):
    torch.manual_seed(0)
    model = build_model(name, learn_sigma=True)
    inputs = example_inputs(model.config, batch_size=3, text_tokens=5)
    out = model(**inputs)
    assert out.shape == (3, 8, 8, 8)
    assert torch.count_nonzero(out) == 0
    # ADM zero_module: the last conv of a residual block and every attention projection start at zero.
    emb_act = torch.randn(3, model.config.emb_dim)
    n_res = n_attn = 0
    for mod in model.modules():
        if isinstance(mod, ResBlock) and isinstance(mod.skip, torch.nn.Identity):
            x = torch.randn(3, mod.conv1.in_channels, 4, 4)
            assert torch.equal(mod(x, emb_act), x)
            n_res += 1
        if isinstance(mod, SelfAttention):
            x = torch.randn(3, mod.qkv.in_features, 4, 4)
            assert torch.equal(mod(x), x)
            n_attn += 1
    assert n_res > 0 and n_attn > 0


def test_class_conditioning_changes_the_output_and_null_class_works():
    torch.manual_seed(0)
    model = build_model("UNet-T", num_classes=10)
    randomize(model)
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    ref = model(x, t, y=torch.tensor([0, 1]))
    assert torch.isfinite(ref).all() and ref.abs().max() > 0
    other = model(x, t, y=torch.tensor([3, 1]))
    assert (other[0] - ref[0]).abs().max() > 1e-4  # the label of sample 0 changed ...
    torch.testing.assert_close(other[1], ref[1], rtol=0, atol=0)  # ... sample 1 is untouched
    assert (model(x, t, y=torch.tensor([10, 1]))[0] - ref[0]).abs().max() > 1e-4  # 10 = the null class
    assert (model(x, t + 0.3, y=torch.tensor([0, 1])) - ref).abs().max() > 1e-4  # time is an input too
    with pytest.raises(ValueError, match="needs y"):
        model(x, t)


def test_text_conditioning_changes_the_output_and_padding_never_does():
    torch.manual_seed(0)
    model = build_model("UNet-T-text")
    randomize(model)
    inputs = padded_text_inputs(model.config)
    ref = model(**inputs)
    assert torch.isfinite(ref).all()
    assert_padding_changes_nothing(model, inputs, ref)
    # A real token and the pooled embedding do change the output (cross-attention and the embedding path).
    emb2 = inputs["text_emb"].clone()
    emb2[0, 0] += 1.0
    assert (model(**{**inputs, "text_emb": emb2})[0] - ref[0]).abs().max() > 1e-4
    assert (model(**{**inputs, "text_pooled": inputs["text_pooled"] + 1.0}) - ref).abs().max() > 1e-4


def test_text_prompt_with_no_real_token_is_finite_and_independent_of_its_padding():
    torch.manual_seed(0)
    model = build_model("UNet-T-text")
    randomize(model)
    inputs = example_inputs(model.config, batch_size=2, text_tokens=6)
    inputs["text_mask"] = torch.tensor([[True] * 6, [False] * 6])
    out = model(**inputs)
    assert torch.isfinite(out).all()
    inputs2 = {
        **inputs,
        "text_emb": torch.randn(2, 9, 32),
        "text_mask": torch.tensor([[True] * 6 + [False] * 3, [False] * 9]),
    }
    inputs2["text_emb"][0, :6] = inputs["text_emb"][0]
    torch.testing.assert_close(model(**inputs2), out, rtol=0, atol=1e-5)


def test_other_sizes_channels_and_input_errors():
    model = build_model("UNet-T", in_channels=3, input_size=16)
    randomize(model)
    assert model(torch.randn(1, 3, 16, 16), torch.rand(1), torch.tensor([2])).shape == (1, 3, 16, 16)
    # Sampling at another resolution than the config (any multiple of 2^(levels-1)) works without changes.
    assert model(torch.randn(1, 3, 24, 8), torch.rand(1), torch.tensor([2])).shape == (1, 3, 24, 8)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(1, 3, 9, 9), torch.rand(1), torch.tensor([2]))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 4, 16, 16), torch.rand(1), torch.tensor([2]))
    text = build_model("UNet-T-text")
    with pytest.raises(ValueError, match="text_emb"):
        text(
            torch.randn(1, 4, 8, 8),
            torch.rand(1),
            text_emb=torch.randn(1, 3, 7),
            text_mask=None,
            text_pooled=torch.randn(1, 32),
        )


def test_config_round_trip_and_errors():
    for name in UNET_PRESETS:
        cfg = PRESETS[name]
        d = config_to_dict(cfg)
        assert d["arch"] == "unet" and isinstance(d["channel_mult"], list)
        assert json.loads(json.dumps(d)) == d  # the dict is its own JSON round trip
        assert config_from_dict(json.loads(json.dumps(d))) == cfg
    cfg = resolve_config("UNet-S", channel_mult=[1, 2, 3, 4], attention_levels=[2, 3], input_size=16)
    assert cfg.channel_mult == (1, 2, 3, 4) and cfg.downsample == 8 and hash(cfg)
    with pytest.raises(ValueError, match="mup"):
        build_model("UNet-T", mup=True)
    with pytest.raises(ValueError, match="exactly one"):
        build_model("UNet-T", text_dim=32, pooled_dim=32)
    with pytest.raises(ValueError, match="exactly one"):
        build_model("UNet-T-text", text_dim=0)
    with pytest.raises(ValueError, match="pooled_dim"):
        build_model("UNet-T-text", pooled_dim=0)
    with pytest.raises(ValueError, match="input_size"):
        build_model("UNet-S", input_size=10)
    with pytest.raises(ValueError, match="attention_levels"):
        build_model("UNet-T", attention_levels=[2])
    with pytest.raises(ValueError, match="channel_mult"):
        config_from_dict({**config_to_dict(PRESETS["UNet-T"]), "channel_mult": [1, "2"]})
    with pytest.raises(ValueError, match="head_channels"):
        build_model("UNet-T", head_channels=24)
    with pytest.raises(ValueError, match="num_groups"):
        build_model("UNet-T", num_groups=5)
    with pytest.raises(ValueError, match="depth"):
        build_model("UNet-T", depth=3)  # a property of the U-Net, not a field


@pytest.mark.parametrize(
    "name,latents",
    [
        ("UNet-S", (8, 16, 32)),
        ("UNet-S-text", (8, 16, 32)),
        ("UNet-B", (16,)),
        ("UNet-B-text", (8,)),
        ("UNet-L", (32,)),
        ("UNet-L-text", (16,)),
    ],
)
def test_presets_at_project_latent_sizes_shapes_and_flops_match_flop_counter_exactly(name, latents):
    """Meta build (no memory, no compute; GroupNorm on meta costs ~0.5 s a forward, so every preset gets one or
    three of the project's latent sizes); the same weights run at every latent size."""
    with torch.device("meta"):
        model = build_model(name, learn_sigma=True)
    assert model.in_channels == 4 and model.out_channels == 8
    assert model.cond_keys == (TEXT_KEYS if name.endswith("-text") else ("y",))
    assert count_params(model.config) == sum(p.numel() for p in model.parameters())
    for latent in latents:
        cfg = resolve_config(model.config, input_size=latent)
        inputs = example_inputs(cfg, batch_size=2, text_tokens=77, device="meta")
        if latent == latents[0]:
            assert model(**inputs).shape == (2, 8, latent, latent)
        assert forward_macs(cfg, 77) == measured_forward_macs(model, inputs)


@pytest.mark.parametrize("name", ["UNet-T", "UNet-T-text"])
def test_analytic_flops_match_flop_counter_on_cpu(name):
    cfg = resolve_config(name, learn_sigma=True, num_res_blocks=2)
    model = build_model(cfg)
    assert forward_macs(cfg, 7) == measured_forward_macs(model, example_inputs(cfg, 2, 7))
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    s = flops_summary(cfg, 7, latent_size=16)
    assert s["forward_macs"] == forward_macs(cfg, 7, latent_size=16) > 4 * forward_macs(cfg, 7)
    assert s["train_flops_per_image"] == 6 * s["forward_macs"]
    if cfg.text_dim:
        assert forward_macs(cfg) == forward_macs(cfg, cfg.max_text_len) > forward_macs(cfg, 7)


def test_param_groups_cover_every_parameter_once():
    model = build_model("UNet-T")
    groups = model.param_groups(1e-3, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(g["lr"] == 1e-3 and g["lr_mult"] == 1.0 for g in groups)  # no muP for the U-Net
    vector = next(g for g in groups if g["name"] == "vector")
    assert vector["weight_decay"] == 0.0
    assert any(p is model.label_embedder.embedding_table.weight for p in vector["params"])
    assert all(g["weight_decay"] == 0.1 for g in groups if g["name"] != "vector")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("UNet-T-text", learn_sigma=True)
    randomize(model)
    path = save_checkpoint(step_dir(tmp_path, 3), model=model, config={"objective": {}}, state={"step": 3})
    ck = load_checkpoint(path)
    assert isinstance(ck.model, UNet) and ck.model.config == model.config
    assert ck.config["model"] == config_to_dict(model.config) and "model_requested" not in ck.config
    assert ck.model.cond_keys == TEXT_KEYS
    inputs = example_inputs(model.config, batch_size=2, text_tokens=5)
    model.eval()
    torch.testing.assert_close(ck.model(**inputs), model(**inputs), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["UNet-T", "UNet-T-text"])
def test_training_steps_with_the_diffusion_loss_stay_finite_and_learn(name):
    torch.manual_seed(0)
    model = build_model(name, learn_sigma=True, num_classes=10) if name == "UNet-T" else build_model(name)
    opt = torch.optim.AdamW(model.param_groups(2e-3, weight_decay=0.01))
    inputs = example_inputs(model.config, batch_size=8, text_tokens=6)
    x0 = inputs.pop("x")
    inputs.pop("t")
    if "y" in inputs:
        inputs["y"] = torch.arange(8) % 10
        null = {"y": 10}
    else:
        null = {k: v[0] for k, v in example_inputs(model.config, 1, 6).items() if k in TEXT_KEYS}
    if model.config.learn_sigma:  # the hybrid loss of a learned-variance model lives on a VP (DDPM) chain
        obj = ObjectiveConfig(process="vp-cosine", prediction="eps", learn_sigma=True, cond_dropout=0.2)
    else:
        obj = ObjectiveConfig(cond_dropout=0.2)
    losses = []
    for step in range(6):
        g = torch.Generator().manual_seed(0)  # the same noise and times each step: the loss must go down
        value = loss(model, x0, inputs, g, obj, null_cond=null)
        opt.zero_grad()
        value.backward()
        if step == 5:
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(value.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0], losses
    # The sampler wrapper keeps the prediction channels only.
    out = model_fn_from_model(model)(x0[:2], torch.rand(2), **{k: v[:2] for k, v in inputs.items()})
    assert out.shape == x0[:2].shape and torch.isfinite(out).all() and out.abs().max() > 0
