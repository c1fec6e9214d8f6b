"""Maximal-update parameterization (muP, Yang et al. 2022 "Tensor Programs V") for DiT and MM-DiT.

The U-Net (models/unet.py) has no muP: it only uses `param_groups` with mup=False (plain AdamW groups).

Parameters are classified by how their shape scales with the width D (hidden_size):
  * input   weights: fan_in fixed, fan_out ~ D (patch embed, timestep MLP 1st layer, label/text embedders);
  * hidden  weights: fan_in ~ D and fan_out ~ D (qkv, proj, MLP, adaLN modulation, timestep MLP 2nd layer);
  * output  weights: fan_in ~ D, fan_out fixed (final linear);
  * vectors: biases, norm gains, embedding tables (no weight decay).
With width multiplier m = D / mup_base_width, muP for Adam (Table 3 of the paper, the `mup` package's
MuReadout + MuAdam formulation) is:
  * hidden weights: init std 1/sqrt(fan_in); Adam lr / m (and weight decay * m so AdamW's lr*wd is unchanged);
  * input weights: init std 1/sqrt(fan_in) (width independent); lr unchanged;
  * output weights: zero init (adaLN-Zero already does this), forward multiplier 1/m; lr unchanged;
  * attention logits scaled by 1/d instead of 1/sqrt(d) (normalised so both agree at d = 64).
At m = 1 the muP model is an ordinary DiT with a particular init, so a learning rate tuned at
`mup_base_width` transfers to wider models.

Depth (opt-in, `mup_depth=True`, needs `mup=True`): Depth-muP of Yang, Yu, Zhu & Hayou 2023 ("Tensor Programs
VI", the Depth-muP definition for block depth 1 under Adam) with depth multiplier r = L / mup_base_depth, L the
number of transformer blocks:
  * every residual branch is multiplied by 1/sqrt(r) (on top of its adaLN gate);
  * every parameter inside the blocks (matrices and vectors) gets Adam lr * 1/sqrt(r) (and weight decay
    * sqrt(r), so AdamW's lr*wd is unchanged); parameters outside the blocks keep their width-muP rule.
With Adam each of the L blocks then moves the residual stream by O(lr / r) and their sum stays O(lr) as depth
grows, where without it the update grows ~linearly with L. At L = mup_base_depth the model, its init and its
learning rates are exactly those of width-only muP. Off by default; without it muP leaves depth untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

#: head dim at which muP's 1/d attention scale equals the standard 1/sqrt(d)
MUP_BASE_HEAD_DIM = 64


def attention_scale(head_dim: int, mup: bool) -> float | None:
    """Softmax scale: None (SDPA default 1/sqrt(d)) for SP; sqrt(64)/d for muP."""
    if not mup:
        return None
    return math.sqrt(MUP_BASE_HEAD_DIM) / head_dim


def width_mult(hidden_size: int, mup: bool, base_width: int) -> float:
    """m = hidden_size / base_width under muP, 1 otherwise."""
    return hidden_size / base_width if mup else 1.0


def depth_mult(depth: int, mup_depth: bool, base_depth: int) -> float:
    """r = depth / base_depth under depth-muP, 1 otherwise."""
    return depth / base_depth if mup_depth else 1.0


def branch_mult(depth: int, mup_depth: bool, base_depth: int) -> float:
    """Depth-muP residual-branch multiplier 1/sqrt(r) (exactly 1.0 when off, so outputs are unchanged)."""
    return 1.0 / math.sqrt(depth_mult(depth, mup_depth, base_depth)) if mup_depth else 1.0


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def classify(
    name: str,
    param: torch.Tensor,
    input_prefixes: Iterable[str],
    output_prefixes: Iterable[str],
    vector_prefixes: Iterable[str] = (),
) -> str:
    """'input' | 'hidden' | 'output' | 'vector' for a parameter name (see module docstring)."""
    if param.ndim < 2 or _matches(name, vector_prefixes):
        return "vector"
    if _matches(name, output_prefixes):
        return "output"
    if _matches(name, input_prefixes):
        return "input"
    return "hidden"


def init_mup_(
    model: nn.Module,
    input_prefixes: Iterable[str],
    output_prefixes: Iterable[str],
    vector_prefixes: Iterable[str] = (),
    keep_prefixes: Iterable[str] = (),
) -> None:
    """Re-initialise Linear weights with muP scales.

    Weights under keep_prefixes (zero-init adaLN-Zero, embedding tables) and output weights keep their init.
    """
    input_prefixes, output_prefixes = tuple(input_prefixes), tuple(output_prefixes)
    keep_prefixes = tuple(keep_prefixes)
    with torch.no_grad():
        for name, p in model.named_parameters():
            kind = classify(name, p, input_prefixes, output_prefixes, vector_prefixes)
            if kind in ("vector", "output") or _matches(name, keep_prefixes):
                continue
            fan_in = p.shape[1]
            p.normal_(0.0, 1.0 / math.sqrt(fan_in))


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    mup: bool,
    hidden_size: int,
    base_width: int,
    input_prefixes: Iterable[str],
    output_prefixes: Iterable[str],
    vector_prefixes: Iterable[str] = (),
    mup_depth: bool = False,
    depth: int = 1,
    base_depth: int = 1,
    block_prefixes: Iterable[str] = (),
) -> list[dict]:
    """Optimizer param groups with muP lr multipliers; each group has keys params, lr, weight_decay, name, lr_mult.

    With mup_depth, parameters under block_prefixes go to groups "block_hidden" / "block_vector" whose lr also
    carries the depth-muP factor 1/sqrt(depth / base_depth); without it the groups are exactly the width-muP ones.
    """
    m = width_mult(hidden_size, mup, base_width)
    r = depth_mult(depth, mup_depth, base_depth)
    block_prefixes = tuple(block_prefixes) if mup_depth else ()
    buckets: dict[str, list[torch.Tensor]] = {
        "hidden": [],
        "input": [],
        "output": [],
        "vector": [],
        "block_hidden": [],
        "block_vector": [],
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = classify(name, p, input_prefixes, output_prefixes, vector_prefixes)
        if kind in ("hidden", "vector") and _matches(name, block_prefixes):
            kind = "block_" + kind
        buckets[kind].append(p)
    spec = {
        # (lr multiplier, weight-decay multiplier): decoupled AdamW decay is lr*wd, keep it width independent.
        "hidden": (1.0 / m, m),
        "input": (1.0, 1.0),
        "output": (1.0, 1.0),
        "vector": (1.0, 0.0),
        # Depth-muP (Tensor Programs VI, Adam): block lr / sqrt(r), decay * sqrt(r) so lr*wd stays put.
        "block_hidden": (1.0 / (m * math.sqrt(r)), m * math.sqrt(r)),
        "block_vector": (1.0 / math.sqrt(r), 0.0),
    }
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        lr_mult, wd_mult = spec[name]
        groups.append(
            {
                "params": params,
                "lr": lr * lr_mult,
                "weight_decay": weight_decay * wd_mult,
                "name": name,
                "lr_mult": lr_mult,
            }
        )
    return groups
