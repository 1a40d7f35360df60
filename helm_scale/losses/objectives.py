"""Objective selection by name and the module the trainer calls (settings: config.py).

Every objective of LossConfig runs through the same vocab-parallel Function
(hxe.VocabParallelHXE), at TP = 1 too.

Call contract: ``loss_fn(logits_shard, targets, loss_mask, group=None) -> LossOutput``.
``logits_shard`` is rank r's slice [r*V/TP, (r+1)*V/TP) of the padded vocabulary (fp32,
bf16 or fp64; fp32 or better inside); ``targets`` global ids; ``loss_mask`` 0/1 (or
fractional weights), zero at padding and non-target positions, whose targets may hold
anything (-100, pad ids). A non-masked target outside the real vocabulary raises (this
check syncs with the device once per call; ``check_targets=False`` skips it for callers
that checked the batch on the host, see :func:`check_targets`). ``loss`` is the
mask-weighted mean over target tokens, ``loss_sum`` the sum that mean divides (what a
trainer normalises by the global batch's token count); a batch with no target token gives
0 with a graph and zero gradients.
Padding entries of the vocabulary take part in the softmax (as in megatron-core's
cross-entropy) but belong to no group.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from helm_scale.codon import CodonTree, Vocabulary, build_tree
from helm_scale.losses import tables as T
from helm_scale.losses.config import LossConfig
from helm_scale.losses.hxe import (ShardTables, VocabParallelHXE, blocked_layout,
                                   grouped_range)
from helm_scale.losses.metrics import LossOutput, metric_means


def _objective_weights(cfg: LossConfig, tree: CodonTree):
    """(log-mass weights, logit-sum weights or None) as [V, H] float64 tables."""
    if cfg.name == "xe":
        return T.leaf_weights(tree), None
    if cfg.name == "hxe":
        return T.hxe_weights(tree, cfg.alpha, cfg.normalized), None
    if cfg.name == "aa":
        return T.parent_group_weights(tree), None
    if cfg.name == "hxe+aa":
        return (T.hxe_weights(tree, cfg.alpha, cfg.normalized)
                + cfg.aa_weight * T.parent_group_weights(tree)), None
    return np.zeros(tree.paths.shape), T.soft_label_weights(tree, cfg.beta)


class HierarchicalLoss(nn.Module):
    """Any objective of ``LossConfig`` over any CodonTree, vocab-parallel.

    ``synonym_class[t]``: tokens predicted "synonymously" share a class (default: the
    token's parent group in ``tree``); ``start_stop_tokens``: targets scored by the
    start/stop accuracy. ``cfg.tree``/``cfg.tree_seed`` are ignored: the tree is given.
    ``reusable_backward``: keep the saved softmax intact so backward can run twice
    (retain_graph, gradcheck) at the cost of one tokens x vocab copy in backward.
    """

    def __init__(self, tree: CodonTree, padded_vocab_size: int, cfg: LossConfig,
                 synonym_class=None, start_stop_tokens=(), reusable_backward: bool = False):
        super().__init__()
        self.reusable_backward = reusable_backward
        self.cfg, self.tree = cfg, tree
        self.vocab_size, self.padded_vocab_size = len(tree.leaf_of), padded_vocab_size
        tab = T.tree_tables(tree, padded_vocab_size)
        self.num_groups, self.height = tab.num_groups, tree.height
        self._group_levels = [(torch.as_tensor(c), torch.as_tensor(p)) for c, p in tab.group_levels]
        if synonym_class is None:
            synonym_class = [tree.parents[leaf] for leaf in tree.leaf_of]
        classes = np.full(padded_vocab_size, -1, dtype=np.int64)
        classes[: self.vocab_size] = np.asarray(synonym_class, dtype=np.int64)
        start_stop = np.zeros(self.vocab_size)
        start_stop[list(start_stop_tokens)] = 1.0
        log_mass_w, logit_sum_w = _objective_weights(cfg, tree)
        host = {
            "parent_column": torch.as_tensor(tab.parent_column),
            "path_columns": torch.as_tensor(tab.path_columns),
            "token_class": torch.as_tensor(classes),
            "log_mass_weights": torch.as_tensor(log_mass_w),
            "diagnostic_weights": torch.as_tensor(_diagnostic_weights(
                tab, T.node_lambdas(tree, cfg.alpha, cfg.normalized), start_stop)),
        }
        if logit_sum_w is not None:
            host["logit_sum_weights"] = torch.as_tensor(logit_sum_w)
        for name, value in host.items():
            self.register_buffer(name, value, persistent=False)
        self._tables_by_device: dict[tuple, dict[str, torch.Tensor]] = {}
        self._shards: dict[tuple, ShardTables] = {}

    def _tables(self, device, dtype) -> dict[str, torch.Tensor]:
        key = (device, dtype)
        if key not in self._tables_by_device:  # moved once per device, not per call
            self._tables_by_device[key] = {
                name: buf.to(device, dtype if buf.is_floating_point() else buf.dtype)
                for name, buf in self.named_buffers()}
        return self._tables_by_device[key]

    def _shard(self, tab, device, dtype, rank: int, v_local: int) -> ShardTables:
        key = (device, dtype, rank, v_local)
        if key not in self._shards:
            lo, hi = rank * v_local, (rank + 1) * v_local
            parent = tab["parent_column"][lo:hi].contiguous()
            block, block_column = blocked_layout(parent)
            levels = tuple((c.to(device), p.to(device)) for c, p in self._group_levels)
            self._shards[key] = ShardTables(lo, parent, tab["token_class"][lo:hi],
                                            levels, self.num_groups,
                                            block, block_column,
                                            *grouped_range(parent, self.num_groups),
                                            num_classes=int(tab["token_class"].max()) + 1)
        return self._shards[key]

    def forward(self, logits_shard: torch.Tensor, targets: torch.Tensor,
                loss_mask: torch.Tensor, group=None, check_targets: bool = True) -> LossOutput:
        tp = 1 if group is None else dist.get_world_size(group)
        rank = 0 if group is None else dist.get_rank(group)
        v_local = logits_shard.shape[-1]
        if v_local * tp != self.padded_vocab_size:
            raise ValueError(f"logit slice of {v_local} x TP {tp} != padded vocabulary "
                             f"{self.padded_vocab_size}")
        if targets.shape != logits_shard.shape[:-1] or loss_mask.shape != targets.shape:
            raise ValueError(f"targets {tuple(targets.shape)} and loss_mask "
                             f"{tuple(loss_mask.shape)} must be logits' leading shape "
                             f"{tuple(logits_shard.shape[:-1])}")
        compute = torch.float64 if logits_shard.dtype == torch.float64 else torch.float32
        tab = self._tables(logits_shard.device, compute)
        mask = loss_mask.reshape(-1).to(compute)
        flat_targets = targets.reshape(-1).long()
        if check_targets:
            check_targets_in_vocabulary(flat_targets, mask, self.vocab_size)
        safe = torch.where(mask != 0, flat_targets, torch.zeros_like(flat_targets))

        shard = self._shard(tab, logits_shard.device, compute, rank, v_local)
        # index_select, not tab[name][safe]: about 3x faster row lookups on CPU
        log_mass_w = tab["log_mass_weights"].index_select(0, safe) * mask[:, None]
        logit_sum_w = tab.get("logit_sum_weights")
        if logit_sum_w is not None:
            logit_sum_w = logit_sum_w.index_select(0, safe) * mask[:, None]
        per_token, log_prob_path, exact, synonym = VocabParallelHXE.apply(
            logits_shard, safe, log_mass_w, logit_sum_w,
            mask if logit_sum_w is not None else None, tab["path_columns"].index_select(0, safe),
            tab["token_class"].index_select(0, safe), shard, group, self.cfg.overwrite_logits,
            self.reusable_backward)

        tokens = mask.sum()
        loss_sum = per_token.sum()
        loss = loss_sum / tokens.clamp_min(1.0)  # all-masked batch: 0, graph kept
        sums = self._metric_sums(loss_sum, log_prob_path, exact, synonym, safe, mask, tokens, tab)
        return LossOutput(loss=loss, metrics=metric_means(sums), sums=sums, loss_sum=loss_sum)

    def _metric_sums(self, loss_sum, log_prob_path, exact, synonym, targets, mask, tokens,
                     tab) -> dict[str, torch.Tensor]:
        # Every diagnostic is linear in per-token values whose weights depend only on the
        # target: add the values up per target (one index_add), then one product with
        # the [targets x values, diagnostics] table (see _diagnostic_weights).
        values = torch.cat([log_prob_path, exact[:, None], synonym[:, None],
                            torch.ones_like(exact)[:, None]], 1).mul_(mask[:, None])
        per_target = values.new_zeros(self.vocab_size, values.shape[1]).index_add_(
            0, targets, values)
        diagnostics = per_target.view(-1) @ tab["diagnostic_weights"]
        h = self.height
        sums = {"tokens": tokens, "loss": loss_sum,
                "codon_correct": diagnostics[h + 1],
                "synonymous_correct": diagnostics[h + 2],
                "start_stop_tokens": diagnostics[h + 3],
                "start_stop_correct": diagnostics[h + 4]}
        for depth in range(1, h + 1):
            sums[f"level{depth}_term"] = diagnostics[depth]
        return {k: v.detach() for k, v in sums.items()}


def check_targets_in_vocabulary(targets: torch.Tensor, loss_mask: torch.Tensor, vocab_size: int) -> None:
    """Raise if a target that carries loss lies outside the real vocabulary. Reads one
    flag: a device sync when the tensors live on an accelerator, free on host tensors."""
    bad = (loss_mask != 0) & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        raise ValueError("a target outside the real vocabulary is not masked out")


def _diagnostic_weights(tab: T.TreeTables, lambdas: np.ndarray,
                        start_stop: np.ndarray) -> np.ndarray:
    """[V * (H + 3), height + 5]: row (t, k) weighs per-token value k of a token with
    target t -- k < H: log P(path slot k), then exact hit, synonym hit, 1 -- into
    columns: the level terms by depth (0..height), codon correct, synonymous correct,
    start/stop tokens, start/stop correct (synonym hit on a start/stop target).

    Level term of slot j: -lambda_j (log P(n_j) - log P(n_{j+1})) at depth(n_j), the
    next slot counted only if it holds a node (the top slot's parent is the root,
    log 1 = 0): so log P(slot k) weighs -lambda_k at depth(n_k) and +lambda_{k-1} at
    depth(n_{k-1})."""
    valid, depth = tab.path_valid[:len(lambdas)], tab.path_depth[:len(lambdas)]
    vocab, height = lambdas.shape
    levels = height + 1  # depths 0..height, one path slot per level
    w = np.zeros((vocab, height + 3, levels + 4))
    rows = np.arange(vocab)
    for k in range(height):
        w[rows, k, depth[:, k]] -= np.where(valid[:, k], lambdas[:, k], 0.0)
        if k:
            both = valid[:, k - 1] & valid[:, k]
            w[rows, k, depth[:, k - 1]] += np.where(both, lambdas[:, k - 1], 0.0)
    w[:, height, levels] = 1.0
    w[:, height + 1, levels + 1] = 1.0
    w[:, height + 2, levels + 2] = start_stop
    w[:, height + 1, levels + 3] = start_stop
    return w.reshape(vocab * (height + 3), levels + 4)


def build_loss(cfg: LossConfig, vocab: Vocabulary, padded_vocab_size: int) -> HierarchicalLoss:
    """The configured objective over the configured codon tree.

    Diagnostics use the real genetic code whatever the tree: synonymous = same amino acid
    (stops are synonyms of each other, ATG and each special only of themselves).
    """
    tree = build_tree(vocab, cfg.tree, cfg.tree_seed)
    class_names = [aa if aa is not None else tok
                   for tok, aa in zip(vocab.tokens, vocab.amino_acid_of)]
    ids = {name: i for i, name in enumerate(dict.fromkeys(class_names))}
    start_stop = [i for i, aa in enumerate(vocab.amino_acid_of) if aa in ("M", "*")]
    return HierarchicalLoss(tree, padded_vocab_size, cfg, [ids[c] for c in class_names],
                            start_stop)
