"""State dicts of sharded (FSDP2, ``DTensor``) and plain modules alike, for checkpoints and the EMA.

Under FSDP every parameter is a ``DTensor`` holding one shard per process. Checkpoints keep the usual
layout (full, unsharded tensors under the model's own names), so a run resumes on any number of
processes and its files load into a plain model. Gathering is a collective: every process calls these.
Ground floor: imports nothing from the package.
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor


def is_sharded(module: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors on the CPU under the module's own names (gathered from the shards when sharded)."""
    out = {}
    for name, value in module.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[name] = value.detach().cpu().contiguous()
    return out


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors into ``module``, each process keeping its shard when sharded."""
    if is_sharded(module):
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=True))
    else:
        module.load_state_dict(state)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state: PyTorch's own layout for a plain model; for a sharded one, full tensors keyed by
    parameter name (on the main process; the others get an empty dict)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
    if not is_sharded(model):
        return optimizer.state_dict()
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def shard_like(copy: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``copy`` (e.g. the EMA, built as a deep copy before sharding) over ``model``'s device mesh. FSDP2
    shards every parameter along its first dimension, so each process's shards of the two line up and the
    EMA update stays local."""
    if not is_sharded(model):
        return copy
    mesh = next(p for p in model.parameters() if isinstance(p, DTensor)).device_mesh
    fully_shard(copy, mesh=mesh)
    return copy
