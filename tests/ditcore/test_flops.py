"""Analytic parameter / MAC counts agree with the real modules and torch.utils.flop_counter."""

from __future__ import annotations

import json

import pytest
import torch

from ditcore.flops import count_params, example_inputs, flops_summary, forward_macs, measured_forward_macs
from ditcore.models import PRESETS, build_model, resolve_config

DIT_PRESETS = [n for n in PRESETS if n.startswith("DiT-") and not n.startswith("DiT-T")]


pytestmark = pytest.mark.usefixtures("one_thread")


def _check(cfg, text_tokens=None):
    """Build on the meta device (no memory, no compute), count with FlopCounterMode, compare."""
    with torch.device("meta"):
        model = build_model(cfg)
    measured = measured_forward_macs(model, example_inputs(cfg, batch_size=2, text_tokens=text_tokens, device="meta"))
    analytic = forward_macs(cfg, text_tokens)
    assert analytic == pytest.approx(measured, rel=0.01)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    return analytic


@pytest.mark.parametrize("latent", [32, 64])
@pytest.mark.parametrize("name", DIT_PRESETS)
def test_dit_presets_match_flop_counter(name, latent):
    _check(resolve_config(name, input_size=latent))


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("MMDiT-d2", {}),
        ("MMDiT-d8", {}),
        ("MMDiT-d24", {}),
        ("MMDiT-d4", {"num_single_blocks": 3, "pos_embed": "rope"}),
        ("MMDiT-d6", {"text_dim": 4096, "pooled_dim": 2048, "input_size": 64}),
    ],
)
def test_mmdit_configs_with_77_text_tokens_match_flop_counter(name, overrides):
    _check(resolve_config(name, **overrides), text_tokens=77)


def test_tiny_models_on_cpu_match_flop_counter():
    """Real CPU execution (flash-attention kernel counted by our formula) agrees as well."""
    for name in ("DiT-T/2", "MMDiT-T", "MMDiT-T-flux"):
        cfg = PRESETS[name]
        model = build_model(cfg)
        measured = measured_forward_macs(model, example_inputs(cfg, 2, 16))
        assert forward_macs(cfg, 16) == pytest.approx(measured, rel=1e-9)


def test_guidance_embedded_students_match_flop_counter():
    """A distilled student's guidance-scale MLP is counted (it was left out of parameters and MACs)."""
    for name in ("DiT-T/2", "MMDiT-T"):
        cfg = resolve_config(name, guidance_embed=True)
        model = build_model(cfg)
        assert count_params(cfg) == sum(p.numel() for p in model.parameters())
        inputs = example_inputs(cfg, 2, 16)
        measured = measured_forward_macs(model, {**inputs, "guidance": torch.full((2,), 3.0)})
        assert forward_macs(cfg, 16) == pytest.approx(measured, rel=1e-9), name
        assert forward_macs(cfg, 16) > forward_macs(name, 16)


def test_dit_paper_gflops_convention():
    # DiT paper Table 4: forward Gflops (= multiply-adds) at 256x256 px (latent 32) and parameter counts.
    paper = {
        "DiT-S/2": 6.06,
        "DiT-B/2": 23.01,
        "DiT-L/2": 80.71,
        "DiT-XL/2": 118.64,
        "DiT-XL/4": 29.05,
        "DiT-XL/8": 7.39,
    }
    for name, gflops in paper.items():
        assert forward_macs(name) / 1e9 == pytest.approx(gflops, rel=0.01), name
    assert count_params("DiT-XL/2") / 1e6 == pytest.approx(675, rel=0.01)
    assert count_params("DiT-S/2") / 1e6 == pytest.approx(33, rel=0.02)


def test_flops_summary_conventions():
    s = flops_summary("MMDiT-d4", text_tokens=77)
    assert set(s) == {"params", "forward_macs", "forward_flops", "train_flops_per_image"}
    assert s["forward_flops"] == 2 * s["forward_macs"]
    assert s["train_flops_per_image"] == 3 * s["forward_flops"]
    assert forward_macs("MMDiT-d4") == forward_macs("MMDiT-d4", 77)  # default = max_text_len
    assert forward_macs("MMDiT-d4", 10) < forward_macs("MMDiT-d4", 77)
    assert flops_summary("DiT-S/2", latent_size=64)["forward_macs"] > 4 * forward_macs("DiT-S/2")
    json.dumps(s)
    u = flops_summary("UNet-B", latent_size=16)
    assert u["train_flops_per_image"] == 3 * u["forward_flops"] == 6 * forward_macs("UNet-B", latent_size=16)
    assert u["params"] == count_params("UNet-B")


def test_unet_macs_by_hand():
    """One level, one res block, 4x4 latent: every conv / linear / attention matmul written out."""
    cfg = resolve_config("UNet-T", channel_mult=[1], attention_levels=[], input_size=4, num_classes=3)
    n, c, e = 16, 32, 128  # positions, channels, embedding width (4 x 32)
    convs = n * 9 * 4 * c + n * 9 * c * 4  # stem and output 3x3 convs
    time_mlp = c * e + e * e  # sinusoid(32) -> 128 -> 128
    res_same = n * 9 * c * c * 2 + e * 2 * c  # two 3x3 convs + the scale/shift projection
    res_cat = n * 9 * 2 * c * c + n * 9 * c * c + e * 2 * c + n * 2 * c * c  # 64 -> 32 with a 1x1 skip conv
    mid_attn = n * 3 * c * c + n * c * c + 2 * n * n * c  # qkv, proj, QK^T and AV
    expected = convs + time_mlp + res_same + (2 * res_same + mid_attn) + 2 * res_cat  # down, middle, up
    assert forward_macs(cfg) == expected
    assert measured_forward_macs(build_model(cfg), example_inputs(cfg, batch_size=3)) == expected


def test_cli_flops_and_models(capsys):
    from jobs.cli import main  # the `ditscale` command

    assert main(["flops", "DiT-XL/2", "--latent-size", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["forward_macs"] == forward_macs("DiT-XL/2")
    assert set(out) >= {"params", "forward_macs", "forward_flops", "train_flops_per_image"}
    assert main(["flops", "MMDiT-d4", "--latent-size", "16", "--text-tokens", "77"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["forward_macs"] == forward_macs(resolve_config("MMDiT-d4", input_size=16), 77)
    assert main(["flops", "UNet-B", "--latent-size", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["forward_macs"] == forward_macs("UNet-B", latent_size=16)
    assert main(["models", "--latent-size", "64"]) == 0
    table = capsys.readouterr().out
    assert "DiT-XL/2" in table and "MMDiT-d24" in table and "UNet-L-text" in table
    assert main(["flops", "DiT-Z/2"]) == 2
    assert "DiT-Z/2" in capsys.readouterr().err
