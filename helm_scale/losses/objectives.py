"""Loss configuration, objective selection by name, and the module the trainer calls.

Objectives (``LossConfig.name``):
  "xe"      plain cross-entropy (the tree only feeds the diagnostics)
  "hxe"     HELM's hierarchical cross-entropy (alpha, normalized)
  "soft"    cross-entropy against tree-distance soft labels (beta); see tables.soft_label_weights
  "aa"      -log P(parent group of the target): the amino acid for a sense codon in HELM's tree
  "hxe+aa"  hxe + aa_weight * aa
The tree ("helm" | "flat" | "random" with tree_seed) shapes every objective; the
random tree is the ablation control. Every objective runs through the same
vocab-parallel Function (hxe.VocabParallelHXE), at TP = 1 too.

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

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from helm_scale.codon import TREE_BUILDERS, CodonTree, Vocabulary, build_tree
from helm_scale.losses import tables as T
from helm_scale.losses.hxe import (ShardTables, VocabParallelHXE, blocked_layout,
                                   grouped_range)
from helm_scale.losses.metrics import LossOutput, metric_means

OBJECTIVES = ("xe", "hxe", "soft", "aa", "hxe+aa")


@dataclass(frozen=True)
class LossConfig:
    name: str = "hxe"
    alpha: float = 0.4
    normalized: bool = True  # lambda divided by the sum over all nodes (the reference form)
    beta: float = 10.0  # soft labels: larger keeps more mass on the target
    aa_weight: float = 1.0  # weight of the amino-acid term in "hxe+aa"
    tree: str = "helm"
    tree_seed: int = 0
    # megatron-style: overwrite an fp32 logits buffer with the softmax and then the
    # gradient (saves one tokens x vocab buffer); the caller must not read logits after.
    overwrite_logits: bool = False

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown loss {self.name!r}; choose one of {OBJECTIVES}")
        if self.tree not in TREE_BUILDERS:
            raise ValueError(f"unknown tree {self.tree!r}; choose one of {sorted(TREE_BUILDERS)}")
        for key in ("alpha", "beta", "aa_weight"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"LossConfig.{key} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.tree_seed, int):
            raise ValueError(f"LossConfig.tree_seed must be an int, got {self.tree_seed!r}")
        if self.name == "hxe+aa" and self.aa_weight == 0:
            raise ValueError("hxe+aa with aa_weight = 0 is hxe: say name='hxe'")


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
            "path_valid": torch.as_tensor(tab.path_valid),
            "path_depth": torch.as_tensor(tab.path_depth),
            "token_class": torch.as_tensor(classes),
            "start_stop": torch.as_tensor(start_stop),
            "log_mass_weights": torch.as_tensor(log_mass_w),
            "lambdas": torch.as_tensor(T.node_lambdas(tree, cfg.alpha, cfg.normalized)),
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
                                            *grouped_range(parent, self.num_groups))
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
        sums = self._metric_sums(per_token.detach(), log_prob_path, exact, synonym, safe,
                                 mask, tokens, tab)
        return LossOutput(loss=loss, metrics=metric_means(sums), sums=sums, loss_sum=loss_sum)

    def _metric_sums(self, per_token, log_prob_path, exact, synonym, targets, mask, tokens,
                     tab) -> dict[str, torch.Tensor]:
        valid = tab["path_valid"].index_select(0, targets)
        # log P(n_j | parent) on each slot; the top slot's parent is the root (log 1 = 0).
        parent_log = torch.cat([log_prob_path[:, 1:], torch.zeros_like(log_prob_path[:, :1])], 1)
        parent_log = torch.where(torch.roll(valid, -1, 1) & (torch.arange(valid.shape[1],
                                 device=valid.device) < valid.shape[1] - 1), parent_log, 0.0)
        lambdas = tab["lambdas"].index_select(0, targets)
        terms = torch.where(valid, -lambdas * (log_prob_path - parent_log), 0.0)
        terms = terms * mask[:, None]
        levels = per_token.new_zeros(self.height + 1).index_add_(
            0, tab["path_depth"].index_select(0, targets).reshape(-1), terms.reshape(-1))
        start_stop = tab["start_stop"].index_select(0, targets) * mask
        sums = {"tokens": tokens, "loss": per_token.sum(),
                "codon_correct": (exact * mask).sum(),
                "synonymous_correct": (synonym * mask).sum(),
                "start_stop_tokens": start_stop.sum(),
                "start_stop_correct": (synonym * start_stop).sum()}
        for depth in range(1, self.height + 1):
            sums[f"level{depth}_term"] = levels[depth]
        return {k: v.detach() for k, v in sums.items()}


def check_targets_in_vocabulary(targets: torch.Tensor, loss_mask: torch.Tensor, vocab_size: int) -> None:
    """Raise if a target that carries loss lies outside the real vocabulary. Reads one
    flag: a device sync when the tensors live on an accelerator, free on host tensors."""
    bad = (loss_mask != 0) & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        raise ValueError("a target outside the real vocabulary is not masked out")


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
