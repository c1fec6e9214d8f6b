"""Maximal-update parameterization (muP, Yang et al. 2022 "Tensor Programs V") for DiT and MM-DiT.

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
"""

from __future__ import annotations

import math
from typing import Iterable

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


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def classify(name: str, param: torch.Tensor, input_prefixes: Iterable[str], output_prefixes: Iterable[str],
             vector_prefixes: Iterable[str] = ()) -> str:
    """'input' | 'hidden' | 'output' | 'vector' for a parameter name (see module docstring)."""
    if param.ndim < 2 or _matches(name, vector_prefixes):
        return "vector"
    if _matches(name, output_prefixes):
        return "output"
    if _matches(name, input_prefixes):
        return "input"
    return "hidden"


def init_mup_(model: nn.Module, input_prefixes: Iterable[str], output_prefixes: Iterable[str],
              vector_prefixes: Iterable[str] = (), keep_prefixes: Iterable[str] = ()) -> None:
    """Re-initialise Linear weights with muP scales; weights under keep_prefixes (zero-init adaLN-Zero, embedding tables) and output weights keep their init."""
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
) -> list[dict]:
    """Optimizer param groups with muP lr multipliers; each group has keys params, lr, weight_decay, name, lr_mult."""
    m = width_mult(hidden_size, mup, base_width)
    buckets: dict[str, list[torch.Tensor]] = {"hidden": [], "input": [], "output": [], "vector": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        buckets[classify(name, p, input_prefixes, output_prefixes, vector_prefixes)].append(p)
    spec = {
        # (lr multiplier, weight-decay multiplier): decoupled AdamW decay is lr*wd, keep it width independent.
        "hidden": (1.0 / m, m),
        "input": (1.0, 1.0),
        "output": (1.0, 1.0),
        "vector": (1.0, 0.0),
    }
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        lr_mult, wd_mult = spec[name]
        groups.append({"params": params, "lr": lr * lr_mult, "weight_decay": weight_decay * wd_mult,
                       "name": name, "lr_mult": lr_mult})
    return groups
