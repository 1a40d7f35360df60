"""Vocab-parallel hierarchical cross-entropy as one autograd Function.

Each tensor-parallel rank holds a contiguous slice of the (padded) vocabulary's logits.
Forward: one all-reduce(MAX) of the row maximum, then one packed all-reduce(SUM) of
[target logit, total mass, synonym hit, path-group masses, (path logit sums)] -- tokens x
tree height floats, never tokens x vocabulary. Backward needs no communication: the
gradient of every objective in ``tables`` has the form

    dL/dz_v = e_v * Cmul[parent(v)] - Cadd[parent(v)] - [v == target] * leaf_coefficient

with e_v = exp(z_v - max) (the saved buffer holds e_v up to a per-token factor that the
coefficients carry) and per-token, per-group coefficients (tokens x groups) built
from tokens x height numbers the forward pass saves. The exp buffer saved for backward
is overwritten by the gradient in place, as megatron-core's vocab_parallel_cross_entropy
does; with ``overwrite_logits`` and fp32 / fp64 logits that buffer is the caller's logits
themselves, which the caller must then not read after the call (bf16 / fp16 logits are
cast to a new fp32 buffer first and never touched).

Passes over the tokens x vocabulary block, forward: the row maximum (amax, no argmax:
the synonym hit compares the target class's own maximum, a tokens x class-size gather,
with the global one), torch's fused softmax (into a new fp32 buffer unless overwriting),
its row maximum (the local scale that rescales rows to the global max through
tokens-sized factors), each group's sum over its own leaves (one index_add over the
grouped run; the padding only adds to the row total); backward: one multiply by the
expanded coefficients (in cache-sized row chunks, a broadcast over the padding) and the
target's own term. Everything else is tokens x groups or smaller, through the 0/1 group
closure matrix: path masses add, for the few groups with groups under them, one tokens x
G by G x internal product; the backward's per-group coefficients are one embedding_bag
of closure rows.

Ties: a token counts as an exact hit when its target reaches the row maximum and as a
synonym hit when any entry of the target's class does (so an exact hit is always a
synonym hit); with distinct logits that is the argmax's verdict.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


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
    num_classes: int = 0  # synonym classes over the whole vocabulary (0: this slice's)

    def __post_init__(self):
        # closure[g, h] = 1 where group g is h or lies under h (sink: only itself): the
        # 0/1 matrix that turns per-group values into sums up or down the tree in one
        # product, adding exactly the same terms as a walk level by level.
        closure = torch.eye(self.num_groups + 1, dtype=torch.float64,
                            device=self.parent_column.device)
        for child, parent in self.group_levels:
            closure.index_add_(1, parent, closure.index_select(1, child))
        # Only groups with groups under them ("internal") need more than their own leaves'
        # sum: mass(h) = own(h) + sum over groups strictly under h, for those few h.
        strict = closure - torch.eye(closure.shape[0], dtype=closure.dtype,
                                     device=closure.device)
        internal = torch.nonzero(strict.sum(0)).flatten()
        object.__setattr__(self, "_cache", {})
        # One more row of ones (column G+1 of a bag) adds a per-token constant to every
        # group: the softmax term of the backward coefficients rides in the same bag.
        object.__setattr__(self, "_closure_rows", torch.cat(
            [closure.T, torch.ones_like(closure[:1])]))
        object.__setattr__(self, "_internal_rows", strict[:, internal].T)
        object.__setattr__(self, "internal_groups", internal)
        members, has_local = _class_members(self.token_class, self.num_classes)
        object.__setattr__(self, "class_members", members)
        object.__setattr__(self, "class_has_local", has_local)

    def _as(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        key = (name, dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(dtype).contiguous()
        return self._cache[key]

    def closure_rows(self, dtype: torch.dtype) -> torch.Tensor:
        """[G+2, G+1]: row h marks h and the groups under it; row G+1 marks every group."""
        return self._as("_closure_rows", dtype)

    def internal_rows(self, dtype: torch.dtype) -> torch.Tensor:
        """[internal groups, G+1]: 1 where a group lies strictly under an internal one."""
        return self._as("_internal_rows", dtype)


def _class_members(token_class: torch.Tensor, num_classes: int):
    """([classes, K] long, [classes] bool): each synonym class's columns in this slice,
    padded by repeating its first one (K = the largest class's count here), and whether
    the class has any column here at all."""
    device = token_class.device
    num_classes = max(num_classes, int(token_class.max()) + 1 if token_class.numel() else 0)
    columns = [torch.nonzero(token_class == c).flatten() for c in range(num_classes)]
    width = max([1] + [c.numel() for c in columns])
    members = torch.zeros(num_classes, width, dtype=torch.long, device=device)
    for c, cols in enumerate(columns):
        if cols.numel():
            members[c] = torch.cat([cols, cols[:1].expand(width - cols.numel())])
    has_local = torch.tensor([c.numel() > 0 for c in columns], dtype=torch.bool,
                             device=device)
    return members, has_local


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


def _path_sums(values: torch.Tensor, shard: ShardTables,
               path_columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([tokens, H], [tokens]): sum of ``values`` over the leaves under each path slot's
    group, and over the whole slice. One pass over the block gives each group's sum over
    its own leaves; groups with groups under them add those (a tokens x G by G x internal
    product); the total adds the few own sums to the padding outside the grouped run."""
    own = values.new_zeros(values.shape[0], shard.num_groups + 1)
    if shard.block:
        per_block = values.view(values.shape[0], -1, shard.block).sum(dim=-1)
        own.index_add_(1, shard.block_column, per_block)
    else:
        lo, hi = shard.grouped_start, shard.grouped_end
        own.index_add_(1, shard.parent_column[lo:hi], values[:, lo:hi])
    total = own.sum(dim=1)
    if not shard.block:
        for outside in (values[:, :shard.grouped_start], values[:, shard.grouped_end:]):
            if outside.shape[1]:
                total += outside.sum(dim=1)
    internal = shard.internal_rows(values.dtype)
    if internal.shape[0]:
        # F.linear (own @ internal.T) takes a faster BLAS path than own @ internal.T
        # materialised: 2.4x on this CPU for a skinny product.
        own = own.index_add(1, shard.internal_groups, F.linear(own, internal))
    return own.gather(1, path_columns), total


def _apply_by_group(block: torch.Tensor, coefficients: torch.Tensor, shard: ShardTables,
                    op: str) -> None:
    """block[:, v] (op)= coefficients[:, parent(v)], in place."""
    rows = block.shape[0]
    if shard.block:
        per_block = coefficients.index_select(1, shard.block_column)
        getattr(block.view(rows, -1, shard.block), op)(per_block[:, :, None])
        return
    # Only the grouped run needs a per-entry lookup; the padding outside it (nearly half
    # of a codon vocabulary padded to 128) shares the sink's coefficient, a broadcast.
    lo, hi = shard.grouped_start, shard.grouped_end
    getattr(block[:, lo:hi], op)(coefficients.index_select(1, shard.parent_column[lo:hi]))
    sink = coefficients[:, shard.num_groups:]
    for outside in (block[:, :lo], block[:, hi:]):
        if outside.shape[1]:
            getattr(outside, op)(sink)


def _chunk_rows(rows: int, cols: int) -> int:
    # The backward expands coefficients to a rows x V_local block; a cache-sized block
    # bounds the extra memory and keeps the multiply's operands in cache.
    return max(1, min(rows, (1 << 20) // max(cols, 1)))


def _down_the_tree(bag_columns: torch.Tensor, weights: torch.Tensor,
                   shard: ShardTables) -> torch.Tensor:
    """[tokens, G+1]: for each group g, the sum of ``weights`` over the bag entries whose
    node is g or an ancestor of g (entry G+1: every group; ``weights`` is 0 on invalid
    path slots).

    That is sum_j weights[:, j] * closure_rows[bag_columns[:, j], g]: a weighted bag of
    closure rows, which embedding_bag sums in one pass (about 4x faster on CPU than
    scattering the weights into tokens x groups and multiplying by the closure)."""
    if bag_columns.shape[1] == 0:  # a flat tree: no group above any leaf
        return weights.new_zeros(weights.shape[0], shard.num_groups + 1)
    return F.embedding_bag(bag_columns, shard.closure_rows(weights.dtype),
                           per_sample_weights=weights, mode="sum")


class VocabParallelHXE(torch.autograd.Function):
    """Per-token losses plus detached diagnostics; see the module docstring."""

    @staticmethod
    def forward(ctx, logits, targets, log_mass_weights, logit_sum_weights, soft_total,
                path_columns, target_class, shard: ShardTables, group, overwrite_logits,
                reusable_backward=False):
        compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
        v_local = logits.shape[-1]
        z = logits.reshape(-1, v_local)
        rows = z.shape[0]
        soft = logit_sum_weights is not None

        # Only a contiguous caller buffer is overwritten: reshape of anything else copies.
        in_place = overwrite_logits and z.dtype == compute and logits.is_contiguous()
        if z.dtype != compute:
            # Cast first, as megatron-core does: a same-dtype max and in-place subtract are
            # twice as fast on CPU as mixed bf16 / fp32 elementwise ops.
            z = z.to(compute, memory_format=torch.contiguous_format)
        # amax, not max(dim): torch's max with indices is ~30x slower on CPU (no vector
        # kernel), and megatron-core pays it. The argmax is not needed: a prediction is
        # synonymous iff some maximal entry is in the target's class, i.e. iff the class's
        # own maximum (a tokens x class-size gather) reaches the global maximum.
        local_max = z.amax(dim=-1)
        # One rank (TP = 1) holds every column: no masks for targets or classes elsewhere.
        split = group is not None and dist.get_world_size(group) > 1
        global_max = local_max
        if split:
            global_max = local_max.clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)

        is_local = None
        target_index = targets
        if split:
            local_target = targets - shard.vocab_start
            is_local = (local_target >= 0) & (local_target < v_local)
            target_index = local_target.clamp(0, v_local - 1)
        target_logit = z.gather(1, target_index[:, None]).squeeze(1)
        # the target's place in the (contiguous) buffer that backward turns into the gradient
        flat_target = torch.arange(0, rows * v_local, v_local, device=z.device) + target_index
        class_max = z.gather(1, shard.class_members.index_select(0, target_class)).amax(1)
        synonym_hit = class_max == global_max
        if split:
            target_logit = torch.where(is_local, target_logit, torch.zeros_like(target_logit))
            synonym_hit &= shard.class_has_local.index_select(0, target_class)

        owned = in_place or z.dtype != logits.dtype  # a buffer this call may overwrite
        parts = [target_logit[:, None], None, synonym_hit.to(compute)[:, None]]
        if soft:  # sums of max-shifted logits, shifted before summing (no cancellation)
            z = z.sub_(global_max[:, None]) if owned else torch.sub(z, global_max[:, None])
            owned = True
            shifted_path = _path_sums(z, shard, path_columns)[0]
        # torch's fused softmax (max, exp, sum and scale per row, in cache) is about twice
        # as fast on CPU as separate subtract, exp and sum passes; in place on an owned
        # buffer (megatron-style: the logits buffer becomes the softmax buffer).
        work = torch.softmax(z, -1, out=z) if owned else torch.softmax(z, -1)
        # work = exp(z - local max) / S_local, and exp(0) = 1 at the local argmax, where
        # work (monotone in z) is largest: e = exp(z - global max) = work * to_global with
        # to_global = exp(local - global max) * S_local = exp(local - global max) / max work.
        to_global = (local_max - global_max).exp() / work.amax(dim=-1)
        path_mass, total = _path_sums(work, shard, path_columns)
        path_mass *= to_global[:, None]
        parts[1] = (total * to_global)[:, None]
        parts.append(path_mass)
        if soft:
            parts.append(shifted_path)
        packed = torch.cat(parts, dim=1)
        if split:
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

        # Backward coefficients, kept at tokens x height: per group g,
        #   multiplier[g] = scale / total - sum_j w_j / P(n_j) [g under n_j]
        # as one bag (the every-group row for the softmax scale in the leaf's slot, then
        # the path slots above the leaf), and the leaf's own coefficient; backward
        # expands them.
        inverse_mass = torch.exp(-log_mass).clamp_max_(1 / tiny)  # contiguous: vectorised
        scale = log_mass_weights.sum(dim=1)
        if soft:
            scale = scale + soft_total
        # The saved buffer holds work = e / to_global: the multiplier carries the factor.
        bag_weights = inverse_mass.mul_(log_mass_weights).neg_()
        bag_weights[:, 0] = scale / total
        bag_weights *= to_global[:, None]
        bag_columns = path_columns.clone()
        bag_columns[:, 0] = shard.num_groups + 1
        leaf = log_mass_weights[:, 0]
        if soft:
            leaf = leaf + logit_sum_weights[:, 0]
        # Save the caller's buffer itself, not a view of it, when it was overwritten: the
        # backward edits it in place.
        ctx.save_for_backward(logits if in_place else work, bag_weights, bag_columns, leaf,
                              flat_target, is_local, logit_sum_weights)
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
        (work, bag_weights, bag_columns, leaf, flat_target, is_local,
         logit_sum_weights) = ctx.saved_tensors
        shard = ctx.shard
        work = work.detach().reshape(-1, work.shape[-1])
        if ctx.reusable:
            work = work.clone()
        g = grad_loss.to(work.dtype)
        rows, cols = work.shape
        multiplier = _down_the_tree(bag_columns, bag_weights * g[:, None], shard)
        addend = None
        if logit_sum_weights is not None:
            path_columns = bag_columns[:, 1:]
            addend = _down_the_tree(path_columns, logit_sum_weights[:, 1:] * g[:, None], shard)
        step = _chunk_rows(rows, cols)
        for start in range(0, rows, step):
            block = work[start:start + step]
            _apply_by_group(block, multiplier[start:start + step], shard, "mul_")
            if addend is not None:
                _apply_by_group(block, addend[start:start + step], shard, "sub_")
        leaf_grad = leaf * g
        if is_local is not None:
            leaf_grad = torch.where(is_local, leaf_grad, torch.zeros_like(g))
        # distinct flat positions: a 1-D index_add is the cheapest scatter on CPU
        work.view(-1).index_add_(0, flat_target, leaf_grad, alpha=-1)
        grad = work.view(ctx.input_shape)
        if ctx.input_dtype != work.dtype:
            grad = grad.to(ctx.input_dtype)
        return grad, None, None, None, None, None, None, None, None, None, None
