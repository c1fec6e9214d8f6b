"""muP coordinate checks: with muP the activation update after a few Adam steps is O(1) in width (and, with
mup_depth, in depth); without it it grows."""

from __future__ import annotations

import pytest
import torch

from ditcore.flops import example_inputs
from ditcore.models import build_model

WIDTHS = (64, 128, 256)


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(arch: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch of 8 8x8 latents with class labels (DiT) or a 6-token caption (MM-DiT), drawn from `g`."""
    inputs = {"x": torch.randn(8, 4, 8, 8, generator=g), "t": torch.rand(8, generator=g)}
    if arch == "dit":
        inputs["y"] = torch.randint(0, 10, (8,), generator=g)
    else:
        inputs.update(
            text_emb=torch.randn(8, 6, 32, generator=g),
            text_mask=torch.ones(8, 6, dtype=torch.bool),
            text_pooled=torch.randn(8, 32, generator=g),
        )
    return inputs


def _adam_steps(model: torch.nn.Module, inputs: dict, target: torch.Tensor, lr: float, steps: int) -> None:
    """`steps` AdamW steps on the squared error to `target`; the output after them must be finite."""
    opt = torch.optim.AdamW(model.param_groups(lr, weight_decay=0.0))
    for _ in range(steps):
        loss = (model(**inputs) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert torch.isfinite(model(**inputs)).all()


def _activation_update(arch: str, width: int, mup: bool, lr: float = 3e-3, steps: int = 4) -> float:
    """Mean |h_T - h_0| of the last block's output after `steps` AdamW steps at a fixed base lr."""
    torch.manual_seed(0)
    heads = width // 32  # fixed head dim, as in the presets
    if arch == "dit":
        model = build_model("DiT-T/2", hidden_size=width, num_heads=heads, mup=mup, mup_base_width=64, num_classes=10)
        last = model.blocks[-1]
    else:
        model = build_model(
            "MMDiT-T", hidden_size=width, num_heads=heads, mup=mup, mup_base_width=64, num_single_blocks=1
        )
        last = model.single_blocks[-1]
    g = torch.Generator().manual_seed(1)
    inputs = _batch(arch, g)
    target = torch.randn(8, 4, 8, 8, generator=g)
    seen = {}
    last.register_forward_hook(lambda mod, args, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(**inputs)
    h0 = seen["h"].clone()
    _adam_steps(model, inputs, target, lr, steps)
    return (seen["h"] - h0).abs().mean().item()


@pytest.mark.parametrize("arch", ["dit", "mmdit"])
def test_mup_coordinate_check(arch):
    mup = [_activation_update(arch, w, mup=True) for w in WIDTHS]
    sp = [_activation_update(arch, w, mup=False) for w in WIDTHS]
    # muP: the update size is width independent (within noise) across a 4x width range ...
    assert max(mup) / min(mup) < 1.5, mup
    # ... standard parameterization: it grows with width (roughly linearly under Adam).
    assert sp[2] / sp[0] > 3.0, sp
    assert sp[0] < sp[1] < sp[2], sp


DEPTHS = (2, 4, 8)  # 4x depth range around mup_base_depth = 2


def _block_update(arch: str, depth: int, mup_depth: bool, lr: float = 1e-3, steps: int = 4) -> float:
    """Mean |h_out - h_in| over the blocks (what the residual branches learned) after `steps` AdamW steps."""
    torch.manual_seed(0)
    common = {
        "hidden_size": 64,
        "num_heads": 2,
        "depth": depth,
        "mup": True,
        "mup_base_width": 64,
        "mup_depth": mup_depth,
        "mup_base_depth": 2,
    }
    if arch == "dit":
        model = build_model("DiT-T/2", num_classes=10, **common)
        blocks = model.blocks
    else:
        model = build_model("MMDiT-T", **common)
        blocks = model.joint_blocks
    g = torch.Generator().manual_seed(1)
    inputs = _batch(arch, g)
    target = torch.randn(8, 4, 8, 8, generator=g)
    seen = {}
    blocks[0].register_forward_pre_hook(lambda mod, args: seen.__setitem__("in", args[0]))
    blocks[-1].register_forward_hook(
        lambda mod, args, out: seen.__setitem__("out", out[0] if isinstance(out, tuple) else out)
    )
    _adam_steps(model, inputs, target, lr, steps)
    # adaLN-Zero blocks start as the identity, so out - in is exactly the blocks' learned contribution.
    return (seen["out"] - seen["in"]).abs().mean().item()


@pytest.mark.parametrize("arch", ["dit", "mmdit"])
def test_depth_mup_coordinate_check(arch):
    dmup = [_block_update(arch, d, mup_depth=True) for d in DEPTHS]
    plain = [_block_update(arch, d, mup_depth=False) for d in DEPTHS]
    # At the base depth depth-muP is exactly width muP.
    assert dmup[0] == plain[0]
    # Width muP alone: every extra block adds its own O(lr) update, so the sum grows with depth ...
    assert plain[0] < plain[1] < plain[2], plain
    assert plain[2] / plain[0] > 2.5, plain
    # ... depth-muP (branches x 1/sqrt(L/L0), block lr x 1/sqrt(L/L0)): it stays O(1) over the 4x depth range
    # (it drifts down a little: the parts of the blocks' updates off the loss gradient add incoherently).
    assert max(dmup) / min(dmup) < 2.0, dmup
    assert dmup[2] <= dmup[0], dmup


def test_depth_mup_param_groups_branch_multipliers_and_errors():
    lr, wd = 1e-3, 0.1
    model = build_model("MMDiT-T-flux", mup=True, mup_base_width=32, mup_depth=True, mup_base_depth=1)
    r = (1 + 2) / 1  # joint + single-stream blocks over the base depth
    m = 64 / 32
    groups = {g["name"]: g for g in model.param_groups(lr, wd)}
    assert sorted(groups) == ["block_hidden", "block_vector", "hidden", "input", "output", "vector"]
    blocks = {id(p) for b in (model.joint_blocks, model.single_blocks) for p in b.parameters()}
    assert {id(p) for k in ("block_hidden", "block_vector") for p in groups[k]["params"]} == blocks
    assert groups["block_hidden"]["lr"] == pytest.approx(lr / (m * r**0.5))
    assert groups["block_hidden"]["weight_decay"] == pytest.approx(wd * m * r**0.5)
    assert groups["block_vector"]["lr"] == pytest.approx(lr / r**0.5) and groups["block_vector"]["weight_decay"] == 0
    assert groups["hidden"]["lr"] == pytest.approx(lr / m)  # outside the blocks: width muP only
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    assert all(b.branch_mult == pytest.approx(r**-0.5) for b in (*model.joint_blocks, *model.single_blocks))
    # Off (the default): muP leaves depth untouched, the blocks' multiplier is exactly 1.
    plain = build_model("DiT-T/2", depth=8, mup=True, mup_base_width=32)
    assert all(b.branch_mult == 1.0 for b in plain.blocks)
    assert [g["name"] for g in plain.param_groups(lr, wd)] == ["hidden", "input", "output", "vector"]
    with pytest.raises(ValueError, match="mup_depth"):
        build_model("DiT-T/2", mup_depth=True)  # needs mup=True
    with pytest.raises(ValueError, match="mup_base_depth"):
        build_model("DiT-T/2", mup=True, mup_depth=True, mup_base_depth=0)


@pytest.mark.parametrize("name", ["DiT-T/2", "MMDiT-T"])
def test_depth_mup_changes_the_model_only_away_from_the_base_depth(name):
    def out(depth: int, mup_depth: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model(name, depth=depth, mup=True, mup_base_width=32, mup_depth=mup_depth, mup_base_depth=2)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():  # non-zero gates, so the branches contribute
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        torch.manual_seed(1)
        return model(**example_inputs(model.config, batch_size=2, text_tokens=5))

    assert torch.equal(out(2, True), out(2, False))
    assert (out(4, True) - out(4, False)).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["DiT-T/2", "MMDiT-T"])
def test_a_guidance_embedders_first_layer_is_an_input_weight(name):
    """Its input width (the sinusoid's 256) is fixed: an input weight at the base lr, not a hidden one at lr / m."""
    model = build_model(name, mup=True, mup_base_width=32, guidance_embed=True)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.param_groups(1e-3, 0.1)}
    weight = model.g_embedder.mlp[0].weight
    assert id(weight) in groups["input"] and id(weight) not in groups["hidden"]
