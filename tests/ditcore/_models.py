"""Model set-up shared by the model tests (DiT, MM-DiT, U-Net)."""

from __future__ import annotations

import torch

from ditcore.flops import example_inputs


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (zero-initialised gates, convs and projections included) non-zero values, so that
    blocks are no longer the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def padded_text_inputs(cfg) -> dict[str, torch.Tensor]:
    """Example inputs for 2 captions of 10 tokens, the first with 6 real tokens, the second with 3."""
    inputs = example_inputs(cfg, batch_size=2, text_tokens=10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 3:] = False
    inputs["text_mask"] = mask
    return inputs


def assert_padding_changes_nothing(model: torch.nn.Module, inputs: dict, ref: torch.Tensor) -> None:
    """Random or infinite values at padded positions, or extra padding tokens at the end, leave `ref` unchanged."""
    mask, text_dim = inputs["text_mask"], model.config.text_dim
    emb = inputs["text_emb"].clone()
    emb[~mask] = torch.randn(int((~mask).sum()), text_dim) * 100.0
    emb[1, 9] = float("inf")
    torch.testing.assert_close(model(**{**inputs, "text_emb": emb}), ref, rtol=0, atol=1e-6)
    longer = {
        **inputs,
        "text_emb": torch.cat([inputs["text_emb"], torch.randn(2, 4, text_dim)], dim=1),
        "text_mask": torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1),
    }
    torch.testing.assert_close(model(**longer), ref, rtol=0, atol=1e-5)
