"""Concept steering of Diffusion Transformers (Zhao et al. 2025, "Diffusion Transformers Learn Highly Interpretable
Features"): mid-layer block outputs carry semantic directions. Features are a block's image-token hidden states
averaged over tokens; a concept's direction is the difference of class means (mean of the samples with the concept
minus the mean of those without); steering adds alpha * v to that block's hidden state at every sampling step.

Pure torch: forward hooks on the model's transformer blocks (DiT `blocks`; MM-DiT `joint_blocks` then
`single_blocks`). A joint block's output is (image, text); only the image stream is read and steered. A FLUX single
block's output holds [image; text] tokens: features read the first N (image) tokens, steering adds to all tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import nn

MAX_ALPHA = 20.0  # |alpha| bound, in units of the class-mean difference a direction is


@dataclasses.dataclass(frozen=True)
class Steer:
    """Add alpha * v[concept] to the hidden state of block `layer` (None: the layer the directions were taken at)."""

    concept: str
    alpha: float
    layer: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Steer:
        """From {"concept", "alpha", "layer"?}; unknown keys are an error."""
        extra = set(d) - {"concept", "alpha", "layer"}
        if extra or "concept" not in d or "alpha" not in d:
            raise ValueError(f"steer must be {{concept, alpha, layer?}}, got keys {sorted(d)}")
        layer = d.get("layer")
        return cls(str(d["concept"]), float(d["alpha"]), None if layer is None else int(layer))


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks in order (DiT: blocks; MM-DiT: joint blocks then single blocks)."""
    if hasattr(model, "joint_blocks"):
        return list(model.joint_blocks) + list(model.single_blocks)
    if hasattr(model, "blocks"):
        return list(model.blocks)
    raise ValueError(f"{type(model).__name__} has no transformer blocks to steer (DiT and MM-DiT only)")


def mid_layer(model: nn.Module) -> int:
    """Index of the middle block (the paper's choice for semantic features), never the last block of a model with
    two or more: the last block's output only feeds the final layer's LayerNorm (docs/steering.md)."""
    return (len(transformer_blocks(model)) - 1) // 2


def _block(model: nn.Module, layer: int) -> nn.Module:
    blocks = transformer_blocks(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} is out of range: the model has blocks 0..{len(blocks) - 1}")
    return blocks[layer]


def _image_tokens(out, n_image: int | None) -> torch.Tensor:
    h = out[0] if isinstance(out, tuple) else out  # joint block: (img, txt)
    return h if n_image is None else h[:, :n_image]


@contextlib.contextmanager
def capture_features(model: nn.Module, layer: int) -> Iterator[list[torch.Tensor]]:
    """Collect block `layer`'s image-token hidden state averaged over tokens, [B, D] per forward, into a list."""
    grid = int(model.config.input_size) // int(model.config.patch_size)
    n_image = (
        grid * grid if layer >= len(getattr(model, "joint_blocks", [])) and hasattr(model, "joint_blocks") else None
    )
    feats: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        feats.append(_image_tokens(out, n_image).float().mean(1).detach())

    handle = _block(model, layer).register_forward_hook(hook)
    try:
        yield feats
    finally:
        handle.remove()


@contextlib.contextmanager
def steering(model: nn.Module, direction: torch.Tensor, alpha: float, layer: int) -> Iterator[None]:
    """Within the block, every forward adds alpha * direction [D] to block `layer`'s (image) hidden state."""
    d = int(model.config.hidden_size)
    if direction.shape != (d,):
        raise ValueError(f"steering direction must be [{d}] (the model width), got {tuple(direction.shape)}")
    delta = None

    def hook(_mod, _inp, out):
        nonlocal delta
        h = out[0] if isinstance(out, tuple) else out
        if delta is None or delta.device != h.device or delta.dtype != h.dtype:
            delta = (float(alpha) * direction).to(device=h.device, dtype=h.dtype)
        h = h + delta
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = _block(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def concept_directions(features: torch.Tensor, labels: Sequence[Sequence[str]] | Sequence[str]) -> dict:
    """Directions v_c = mean(features with concept c) - mean(features without c) per concept.

    labels[i] is sample i's concept name or a list of them (a caption can name several colours). v_c is kept at its
    natural scale: steering with alpha = 1 moves a hidden state by the distance between the two class means.
    Returns {"directions": {name: v_c [D]}, "norm": {name: |v_c|}}.
    """
    feats = features.double()
    sets = [{x} if isinstance(x, str) else set(x) for x in labels]
    if len(sets) != feats.shape[0]:
        raise ValueError(f"{len(sets)} labels for {feats.shape[0]} feature rows")
    out, norms = {}, {}
    for name in sorted(set().union(*sets)):
        has = torch.tensor([name in s for s in sets])
        if has.all():
            continue  # no negatives: no direction
        diff = feats[has].mean(0) - feats[~has].mean(0)
        norms[name] = float(diff.norm())
        out[name] = diff.float()
    return {"directions": out, "norm": norms}


def pca_2d(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coordinates [N, 2], components [2, D], explained variance ratio [2]) of the centred features."""
    x = features.double() - features.double().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    var = s**2
    return (x @ vh[:2].T).float(), vh[:2].float(), (var[:2] / var.sum()).float()
