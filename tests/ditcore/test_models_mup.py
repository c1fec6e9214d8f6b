"""muP coordinate check: with muP the activation update after a few Adam steps is O(1) in width; without it grows."""

from __future__ import annotations

import pytest
import torch

from ditcore.models import build_model

WIDTHS = (64, 128, 256)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls: one thread is faster and immune to other processes competing for the cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _activation_update(arch: str, width: int, mup: bool, lr: float = 3e-3, steps: int = 4) -> float:
    """Mean |h_T - h_0| of the last block's output after `steps` AdamW steps at a fixed base lr."""
    torch.manual_seed(0)
    heads = width // 32  # fixed head dim, as in the presets
    if arch == "dit":
        model = build_model("DiT-T/2", hidden_size=width, num_heads=heads, mup=mup, mup_base_width=64, num_classes=10)
        last = model.blocks[-1]
    else:
        model = build_model("MMDiT-T", hidden_size=width, num_heads=heads, mup=mup, mup_base_width=64,
                            num_single_blocks=1)
        last = model.single_blocks[-1]
    g = torch.Generator().manual_seed(1)
    if arch == "dit":
        inputs = {"x": torch.randn(8, 4, 8, 8, generator=g), "t": torch.rand(8, generator=g),
                  "y": torch.randint(0, 10, (8,), generator=g)}
    else:
        inputs = {"x": torch.randn(8, 4, 8, 8, generator=g), "t": torch.rand(8, generator=g),
                  "text_emb": torch.randn(8, 6, 32, generator=g), "text_mask": torch.ones(8, 6, dtype=torch.bool),
                  "text_pooled": torch.randn(8, 32, generator=g)}
    target = torch.randn(8, 4, 8, 8, generator=g)
    seen = {}
    last.register_forward_hook(lambda mod, args, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    opt = torch.optim.AdamW(model.param_groups(lr, weight_decay=0.0))
    with torch.no_grad():
        model(**inputs)
    h0 = seen["h"].clone()
    for _ in range(steps):
        loss = (model(**inputs) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out).all()
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
