"""AdamW parameter groups and a TP-aware global gradient norm for the DDP backend."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from helm_scale.parallel.config import OptimizerConfig


def build_param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Two AdamW groups: matrices decay; norms, biases (any 1-D parameter) and, unless
    cfg.decay_embeddings, the tables the model names in embedding_parameter_names() do not."""
    embeddings = model.embedding_parameter_names() if hasattr(model, "embedding_parameter_names") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or (name in embeddings and not cfg.decay_embeddings)
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(param_groups: list[dict], cfg: OptimizerConfig) -> torch.optim.AdamW:
    # Fused (one kernel for every parameter) where the parameters are on CUDA; elsewhere
    # torch's default foreach implementation, which every CPU parity test was measured with.
    on_cuda = all(p.is_cuda for group in param_groups for p in group["params"])
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True if on_cuda else None)


@torch.no_grad()
def clip_grad_norm_tp(params: list[torch.Tensor], max_norm: float, tp_group) -> torch.Tensor:
    """Global L2 norm over TP x DP of already data-parallel-reduced gradients; scales the
    gradients in place when max_norm > 0 and the norm exceeds it. Returns the norm before
    clipping as a 0-d device tensor: reading it syncs with the device, so callers read it
    only when they log.

    Written here rather than megatron's get_grad_norm_fp32 / clip_grad_by_total_norm_fp32
    because those (megatron-core 0.16) allocate with device='cuda' and assert CUDA grads, so
    they cannot run on the CPU path; one implementation keeps the tested path the GPU path.
    megatron's own filter decides what counts once: TP-sharded params on every rank,
    replicated ones (norms, row-parallel biases) on TP rank 0 only. (A tied embedding is
    one Parameter object, so it is listed once already.)
    """
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate  # on use: export reads DCP without megatron
    grads = [p.grad for p in params if p.grad is not None]
    counted = [p.grad for p in params if p.grad is not None and param_is_not_tensor_parallel_duplicate(p)]
    device = grads[0].device if grads else torch.device("cpu")
    square_sum = torch.zeros((), dtype=torch.float32, device=device)
    for g in counted:
        square_sum += g.float().pow(2).sum()
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        dist.all_reduce(square_sum, group=tp_group)
    norm = square_sum.sqrt()
    if max_norm > 0 and grads:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
