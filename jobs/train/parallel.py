"""Parallel wrapping of the model, kept apart from the model and the loop (as torchtitan's `parallelize`).

DDP comes from Ray Train (`prepare_model`, in jobs/train/env.py); FSDP2 shards every transformer block and then
the root with `torch.distributed.fsdp.fully_shard`; `torch.compile` wraps whichever results. The EMA is sharded
exactly like the model so its update stays a local foreach on each rank, and gathered only for checkpoints and
validation. Optimizer state is saved index-keyed (torch's layout) and converted to the name-keyed layout
torch.distributed.checkpoint uses when FSDP2 loads it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


def fully_shard_blocks(model: nn.Module, mixed_precision: str = "none") -> nn.Module:
    """FSDP2: shard every block of every ModuleList, then the root (torch.distributed.fsdp.fully_shard).

    mixed_precision="bf16": a MixedPrecisionPolicy that all-gathers and computes in bf16 and reduces gradients in
    fp32 (the sharded parameters and the optimizer stay fp32). Blocks cast their inputs to bf16; the root does not
    (the timestep stays fp32 up to its sinusoidal embedding) and returns fp32, so the loss is computed in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    block_mp = root_mp = MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        block_mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        root_mp = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16,
            reduce_dtype=torch.float32,
            output_dtype=torch.float32,
            cast_forward_inputs=False,
        )
    elif mixed_precision != "none":
        raise ValueError(f"run.fsdp_mixed_precision must be 'none' or 'bf16', got {mixed_precision!r}")
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block, mp_policy=block_mp)
    fully_shard(model, mp_policy=root_mp)
    return model


def materialize_from_rank0(model: nn.Module, full: Optional[nn.Module], device: torch.device) -> None:
    """A sharded model built on the meta device gets storage on `device` and the state of rank 0's whole model
    `full` (None on the other ranks): parameters scattered shard by shard, buffers (fixed tables such as positional
    embeddings, not in the state dict) broadcast.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=device)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full.state_dict() if full is not None else {}, options=opts)
    src = dict(full.named_buffers()) if full is not None else {}
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if full is not None:
                buf.copy_(src[name])
            torch.distributed.broadcast(buf, src=0)


def shard_from_rank0(full: Optional[dict[str, torch.Tensor]], sharded: dict[str, torch.Tensor]) -> dict:
    """Like `shard_like`, with the full tensors on rank 0 only (`full` None elsewhere): scattered from rank 0."""
    from torch.distributed.tensor import distribute_tensor

    out = {}
    for n, p in sharded.items():
        src = (
            full[n].detach().to(p.device) if full is not None else torch.empty(p.shape, dtype=p.dtype, device=p.device)
        )
        out[n] = distribute_tensor(src, p.device_mesh, p.placements, src_data_rank=0)
    return out


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


def grad_sync(wrapped: nn.Module, raw: nn.Module, fsdp: bool, last: bool) -> Any:
    """Context of one micro-batch's forward + backward: gradients are reduced across workers only when `last`
    (DDP's no_sync, FSDP2's set_requires_gradient_sync), so accumulation costs one reduction per optimizer step."""
    import contextlib

    if fsdp:
        raw.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if not last and hasattr(wrapped, "no_sync"):
        return wrapped.no_sync()
    return contextlib.nullcontext()
