"""Full (TP-gathered) weights of a megatron TP model: the layout-independent view used to
compare runs across TP sizes and to export weights."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


@torch.no_grad()
def gather_tp_state(module: nn.Module, tp_group, tensor_of=None) -> dict[str, torch.Tensor]:
    """Every parameter as a full fp32 CPU tensor, concatenating TP shards along megatron's
    ``partition_dim``. Collective over the TP group: call it on every TP rank.
    ``tensor_of(param)`` picks another tensor of the parameter's shape to gather (e.g. its
    gradient); by default the parameter itself."""
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    out = {}
    for name, param in module.named_parameters():
        local = (param if tensor_of is None else tensor_of(param)).detach().float()
        if tp > 1 and getattr(param, "tensor_model_parallel", False):
            if getattr(param, "partition_stride", 1) != 1:
                raise NotImplementedError(f"{name}: strided TP partitions are not gathered here")
            shards = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(shards, local.contiguous(), group=tp_group)
            local = torch.cat(shards, dim=param.partition_dim)
        out[name] = local.cpu().clone()  # a snapshot, never a view of the live parameter
    return out
