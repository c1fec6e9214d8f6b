"""Parallel wrapping of the model, kept apart from the model and the loop (as torchtitan's `parallelize`).

DDP comes from Ray Train (`prepare_model`, in jobs/train/env.py); FSDP2 shards every transformer block and then
the root with `torch.distributed.fsdp.fully_shard`; `torch.compile` wraps whichever results. The EMA is sharded
exactly like the model so its update stays a local foreach on each rank, and gathered only for checkpoints and
validation. Optimizer state is saved index-keyed (torch's layout) and converted to the name-keyed layout
torch.distributed.checkpoint uses when FSDP2 loads it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def fully_shard_blocks(model: nn.Module) -> nn.Module:
    """FSDP2: shard every block of every ModuleList, then the root (torch.distributed.fsdp.fully_shard)."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)
    return model


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile(model) when `enabled` (run.compile), else the model itself."""
    return torch.compile(model) if enabled else model


def shard_like(full: dict[str, torch.Tensor], sharded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors distributed with the device mesh and placements of their sharded (DTensor) counterparts."""
    from torch.distributed.tensor import distribute_tensor

    return {n: distribute_tensor(full[n].detach(), p.device_mesh, p.placements) for n, p in sharded.items()}


def to_cpu_full(t: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy of `t`, gathered first when it is an FSDP2 DTensor shard."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu").clone()


def optimizer_param_names(optimizer: torch.optim.Optimizer, module: nn.Module) -> list[str]:
    """Parameter names in the order torch's optimizer state_dict numbers them (0, 1, ... across groups)."""
    name_of = {id(p): n for n, p in module.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def state_by_index(sd: dict, names: list[str]) -> dict:
    """Name-keyed optimizer state (torch.distributed.checkpoint) -> torch's index-keyed layout."""
    index = {n: i for i, n in enumerate(names)}
    return {
        "state": {index[n]: v for n, v in sd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]],
    }


def state_by_name(sd: dict, names: list[str]) -> dict:
    """Index-keyed optimizer state (checkpoint files) -> name-keyed (torch.distributed.checkpoint)."""
    return {
        "state": {names[int(i)]: v for i, v in sd["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in sd["param_groups"]],
    }


class StateDictHolder(nn.Module):
    """A gathered state dict that save_checkpoint can treat as a module (FSDP2 full weights)."""

    def __init__(self, sd: dict, like: nn.Module) -> None:
        super().__init__()
        self._sd = sd
        self.config = like.config

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:  # type: ignore[override]
        """The held tensors."""
        return dict(self._sd)
