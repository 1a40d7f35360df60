"""Vocab-parallel hierarchical cross-entropy as one autograd Function.

Each tensor-parallel rank holds a contiguous slice of the (padded) vocabulary's logits.
Forward: one all-reduce(MAX) of the row maximum, then one packed all-reduce(SUM) of
[target logit, total mass, synonym hit, path-group masses, (path logit sums)] -- tokens x
tree height floats, never tokens x vocabulary. Backward needs no communication: the
gradient of every objective in ``tables`` has the form

    dL/dz_v = e_v * Cmul[parent(v)] - Cadd[parent(v)] - [v == target] * leaf_coefficient

with e_v = exp(z_v - max) and per-token, per-group coefficients (tokens x groups) that
the forward pass already knows. The exp buffer saved for backward is overwritten by the
gradient in place, as megatron-core's vocab_parallel_cross_entropy does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ShardTables:
    """This rank's view of the tree tables (tensors already on the logits' device)."""

    vocab_start: int
    parent_column: torch.Tensor  # [V_local] long, sink = num_groups
    token_class: torch.Tensor  # [V_local] long synonym class, -1 for padding
    group_levels: tuple  # ((child columns, parent columns), ...) deepest first
    num_groups: int
    # When the slice's parent groups come in equal contiguous blocks (e.g. k-mer
    # vocabularies in lexicographic order) the group sums are reshaped reductions, which
    # are several times faster than index_add with repeated indices.
    block: int = 0  # block length, 0 when the slice is not blocked
    block_column: torch.Tensor | None = None  # [V_local / block] group column per block
    # Columns [grouped_start, grouped_end) hold every entry that belongs to a group; the
    # rest (padding) only adds to the total. index_add is slow on repeated indices, so the
    # padding run is kept out of it.
    grouped_start: int = 0
    grouped_end: int = 0


def grouped_range(parent_column: torch.Tensor, sink: int) -> tuple[int, int]:
    inside = torch.nonzero(parent_column != sink).flatten()
    return (int(inside[0]), int(inside[-1]) + 1) if inside.numel() else (0, 0)


def blocked_layout(parent_column: torch.Tensor) -> tuple[int, torch.Tensor | None]:
    """(block length, column per block) if the columns form equal constant runs."""
    cols = parent_column.numel()
    changes = torch.nonzero(parent_column[1:] != parent_column[:-1]).flatten()
    block = int(changes[0]) + 1 if changes.numel() else cols
    if block < 8 or cols % block:
        return 0, None
    runs = parent_column.view(-1, block)
    if not bool((runs == runs[:, :1]).all()):
        return 0, None
    return block, runs[:, 0].contiguous()


def _group_sums(values: torch.Tensor, shard: ShardTables) -> torch.Tensor:
    """[tokens, G+1]: sum of ``values`` over each group's leaves in this slice."""
    out = values.new_zeros(values.shape[0], shard.num_groups + 1)
    if shard.block:
        per_block = values.view(values.shape[0], -1, shard.block).sum(dim=-1)
        return out.index_add_(1, shard.block_column, per_block)
    lo, hi = shard.grouped_start, shard.grouped_end
    return out.index_add_(1, shard.parent_column[lo:hi], values[:, lo:hi])


def _sum_up_the_tree(sums: torch.Tensor, shard: ShardTables) -> torch.Tensor:
    """Leaf-parent group sums -> every group's sum (in place; level by level, which is
    far cheaper than a tokens x G x G product)."""
    for child, parent in shard.group_levels:
        sums.index_add_(1, parent, sums.index_select(1, child))
    return sums


def _sum_down_the_tree(coefficients: torch.Tensor, shard: ShardTables) -> torch.Tensor:
    """Per-group coefficients -> each group's total over itself and its ancestors."""
    for child, parent in reversed(shard.group_levels):
        coefficients.index_add_(1, child, coefficients.index_select(1, parent))
    return coefficients


def _apply_by_group(block: torch.Tensor, coefficients: torch.Tensor, shard: ShardTables,
                    op: str) -> None:
    """block[:, v] (op)= coefficients[:, parent(v)], in place."""
    rows, cols = block.shape
    if shard.block:
        per_block = coefficients.gather(1, shard.block_column.expand(rows, -1))
        getattr(block.view(rows, -1, shard.block), op)(per_block[:, :, None])
    else:
        getattr(block, op)(coefficients.gather(1, shard.parent_column.expand(rows, cols)))


def _chunk_rows(rows: int, cols: int, groups: int) -> int:
    # The backward gathers a rows x V_local coefficient block; keeping it no larger than
    # the tokens x groups tables (and cache-sized) bounds the extra memory.
    budget = min(rows * (groups + 1), 1 << 20)
    return max(1, min(rows, budget // max(cols, 1)))


class VocabParallelHXE(torch.autograd.Function):
    """Per-token losses plus detached diagnostics; see the module docstring."""

    @staticmethod
    def forward(ctx, logits, targets, log_mass_weights, logit_sum_weights, soft_total,
                path_columns, target_class, shard: ShardTables, group, overwrite_logits,
                reusable_backward=False):
        compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
        v_local = logits.shape[-1]
        z = logits.reshape(-1, v_local)
        if z.dtype == compute and overwrite_logits and z.is_contiguous():
            work = z  # megatron-style: the logits buffer becomes the softmax buffer
        else:
            work = z.to(compute, copy=True)
        rows, sink = work.shape[0], shard.num_groups
        soft = logit_sum_weights is not None

        local_max, local_arg = work.max(dim=-1)
        global_max = local_max.clone()
        if group is not None:
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)

        local_target = targets - shard.vocab_start
        is_local = (local_target >= 0) & (local_target < v_local)
        target_index = local_target.clamp(0, v_local - 1)
        target_logit = work.gather(1, target_index[:, None]).squeeze(1)
        target_logit = torch.where(is_local, target_logit, torch.zeros_like(target_logit))
        synonym_hit = (local_max == global_max) & (shard.token_class[local_arg] == target_class)

        work.sub_(global_max[:, None])
        parts = [target_logit[:, None], None, synonym_hit.to(compute)[:, None]]
        if soft:
            shifted_sums = _group_sums(work, shard)
            shifted_path = _sum_up_the_tree(shifted_sums, shard).gather(1, path_columns)
        work.exp_()
        mass = _group_sums(work, shard)
        parts[1] = work.sum(dim=1, keepdim=True)
        parts.append(_sum_up_the_tree(mass, shard).gather(1, path_columns))
        if soft:
            parts.append(shifted_path)
        packed = torch.cat(parts, dim=1)
        if group is not None:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)

        height = path_columns.shape[1]
        shifted_target = packed[:, 0] - global_max
        total = packed[:, 1]
        log_total = total.log()
        tiny = torch.finfo(compute).tiny
        # A group holds the target, so its mass is at least the target's: the clamp only
        # repairs exp underflow and keeps every log finite.
        log_mass = packed[:, 3:3 + height].clamp_min(tiny).log()
        log_mass = torch.maximum(log_mass, shifted_target[:, None])
        log_mass[:, 0] = shifted_target
        log_prob_path = log_mass - log_total[:, None]
        loss = -(log_mass_weights * log_prob_path).sum(dim=1)
        if soft:
            sums = packed[:, 3 + height:].clone()
            sums[:, 0] = shifted_target
            loss = loss - (logit_sum_weights * sums).sum(dim=1) + soft_total * log_total

        # Backward coefficients, tokens x groups.
        inverse_mass = log_mass.exp().clamp_min(tiny).reciprocal()
        per_group = work.new_zeros(rows, sink + 1).scatter_add_(
            1, path_columns[:, 1:], log_mass_weights[:, 1:] * inverse_mass[:, 1:])
        scale = log_mass_weights.sum(dim=1)
        if soft:
            scale = scale + soft_total
        multiplier = (scale / total)[:, None] - _sum_down_the_tree(per_group, shard)
        leaf = log_mass_weights[:, 0]
        addend = None
        if soft:
            leaf = leaf + logit_sum_weights[:, 0]
            addend = _sum_down_the_tree(work.new_zeros(rows, sink + 1).scatter_add_(
                1, path_columns[:, 1:], logit_sum_weights[:, 1:]), shard)
        # Save the caller's buffer itself, not a view of it, when it was overwritten: the
        # backward edits it in place.
        ctx.save_for_backward(logits if work.data_ptr() == logits.data_ptr() else work,
                              multiplier, addend, leaf, target_index, is_local)
        ctx.shard = shard  # constant tables, not activations
        ctx.input_shape, ctx.input_dtype, ctx.used = logits.shape, logits.dtype, False
        ctx.reusable = reusable_backward

        exact_hit = (shifted_target >= 0).to(compute)
        synonym_hit = (packed[:, 2] > 0).to(compute)
        ctx.mark_non_differentiable(log_prob_path, exact_hit, synonym_hit)
        return loss, log_prob_path, exact_hit, synonym_hit

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        if ctx.used and not ctx.reusable:
            raise RuntimeError("VocabParallelHXE overwrites its saved softmax in backward; "
                               "a second backward (retain_graph) is not supported")
        ctx.used = True
        work, multiplier, addend, leaf, target_index, is_local = ctx.saved_tensors
        work = work.detach().reshape(-1, work.shape[-1])
        if ctx.reusable:
            work = work.clone()
        g = grad_loss.to(work.dtype)
        multiplier = multiplier * g[:, None]
        addend = None if addend is None else addend * g[:, None]
        rows, cols = work.shape
        step = _chunk_rows(rows, cols, multiplier.shape[1])
        for start in range(0, rows, step):
            block = work[start:start + step]
            _apply_by_group(block, multiplier[start:start + step], ctx.shard, "mul_")
            if addend is not None:
                _apply_by_group(block, addend[start:start + step], ctx.shard, "sub_")
        arange = torch.arange(rows, device=work.device)
        work[arange, target_index] -= torch.where(is_local, leaf * g, torch.zeros_like(g))
        grad = work.view(ctx.input_shape)
        if ctx.input_dtype != work.dtype:
            grad = grad.to(ctx.input_dtype)
        return grad, None, None, None, None, None, None, None, None, None, None
