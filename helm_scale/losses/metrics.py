"""Loss output and its diagnostics, kept as sums so data-parallel ranks can add them.

Every entry of ``LossOutput.sums`` is a sum over this batch's target tokens (weighted by
the loss mask), already identical on every tensor-parallel rank. To average over
data-parallel ranks: ``metric_means(reduce_metric_sums(out.sums, dp_group))``. The
training objective's denominator, the token count of a whole optimizer step over the
data-parallel ranks: ``global_token_count(loss_masks, dp_group)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

# mean name -> (numerator sum, denominator sum)
_RATIOS = {
    "loss": ("loss", "tokens"),
    "codon_accuracy": ("codon_correct", "tokens"),
    "synonymous_accuracy": ("synonymous_correct", "tokens"),
    "start_stop_accuracy": ("start_stop_correct", "start_stop_tokens"),
}


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, mean over target tokens, differentiable
    metrics: dict[str, torch.Tensor]  # detached means (see metric_means)
    sums: dict[str, torch.Tensor]  # detached sums + counts, reducible over data parallel
    loss_sum: torch.Tensor  # scalar, (mask-weighted) sum over target tokens, differentiable


def metric_means(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Means from sums; a ratio with no tokens is 0, and the counts are passed through."""
    out = {name: sums[num] / sums[den].clamp_min(1e-12) for name, (num, den) in _RATIOS.items()}
    for key, value in sums.items():
        if key.startswith("level"):
            out[key] = value / sums["tokens"].clamp_min(1e-12)
    out["tokens"] = sums["tokens"]
    out["start_stop_tokens"] = sums["start_stop_tokens"]
    return out


def perplexity(cross_entropy: float) -> float:
    """exp of a mean cross-entropy in nats, capped at exp(50) so a diverged model logs a number."""
    return math.exp(min(cross_entropy, 50.0))


def reduce_metric_sums(sums: dict[str, torch.Tensor], group=None) -> dict[str, torch.Tensor]:
    """All-reduce(SUM) every sum in one packed call over ``group`` (e.g. data parallel)."""
    keys = sorted(sums)
    packed = torch.stack([sums[k].double() for k in keys])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return {k: packed[i] for i, k in enumerate(keys)}


def global_token_count(loss_masks: list[torch.Tensor], group=None) -> torch.Tensor:
    """The loss-bearing tokens (mask weights) of ``loss_masks``, summed over ``group``'s ranks:
    with one optimizer step's micro-batches and the data-parallel group, the denominator of
    the step's token-mean objective. One all-reduce; the count stays on the device (float64)."""
    count = torch.stack([m.sum(dtype=torch.float64) for m in loss_masks]).sum()
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
    return count
