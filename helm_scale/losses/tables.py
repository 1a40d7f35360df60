"""Per-token lookup tables that turn a CodonTree into loss weights.

Every objective here is a linear combination, per target token t, of two quantities on
the nodes of t's path (leaf first, root excluded, as ``CodonTree.paths`` lists them):

    loss(t) = - sum_j w[t, j] log P(n_j)  -  sum_j u[t, j] S(n_j)  +  [u != 0] log Z
    (S(n): sum of the max-shifted logits under n; Z: the softmax normaliser; the u terms
    are soft labels, sum_i y_i log p_i written per node)

so the vocab-parallel kernel is objective-agnostic: it reduces path masses and path
logit sums, and these tables (built once, in float64, from the tree) say how to weigh
them. Groups are the tree's internal non-root nodes; column G is a sink for vocabulary
entries that belong to no group (padding, and leaves hanging directly from the root).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helm_scale.codon import CodonTree


@dataclass(frozen=True)
class TreeTables:
    num_groups: int  # G; index G is the no-group sink
    parent_column: np.ndarray  # [V_padded] group column of each entry's parent leaf group
    path_columns: np.ndarray  # [V, H] group column per path slot; slot 0 (the leaf) -> sink
    path_valid: np.ndarray  # [V, H] bool: the slot holds a node
    path_depth: np.ndarray  # [V, H] depth of the slot's node (0 where invalid)
    leaves_under: np.ndarray  # [V, H] number of real tokens under the slot's node
    # (child group columns, their parent group columns) per depth, deepest first: adding
    # each level into its parents turns leaf-parent sums into every group's sum.
    group_levels: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


def tree_tables(tree: CodonTree, padded_vocab_size: int) -> TreeTables:
    vocab_size = len(tree.leaf_of)
    if padded_vocab_size < vocab_size:
        raise ValueError(f"padded vocabulary {padded_vocab_size} < tree vocabulary {vocab_size}")
    groups = tree.groups
    sink = len(groups)
    column_of = np.full(tree.num_nodes, sink, dtype=np.int64)
    column_of[groups] = np.arange(len(groups))

    parent_column = np.full(padded_vocab_size, sink, dtype=np.int64)
    parent_column[:vocab_size] = column_of[[tree.parents[leaf] for leaf in tree.leaf_of]]

    paths = tree.paths
    valid = paths >= 0
    path_columns = np.where(valid, column_of[np.where(valid, paths, 0)], sink)
    path_columns[:, 0] = sink
    depth = np.where(valid, tree.depth[np.where(valid, paths, 0)], 0)
    sizes = tree.membership.sum(axis=1)
    leaves_under = np.where(valid, sizes[np.where(valid, paths, 0)], 0)
    levels = []
    for d in range(tree.height, 1, -1):
        child = [g for g in groups if tree.depth[g] == d and tree.parents[g] != 0]
        if child:
            levels.append((column_of[child], column_of[[tree.parents[g] for g in child]]))
    return TreeTables(sink, parent_column, path_columns, valid, depth, leaves_under,
                      tuple(levels))


def node_lambdas(tree: CodonTree, alpha: float, normalized: bool) -> np.ndarray:
    """[V, H] lambda(n_j) = exp(-alpha depth) / Z of every path slot (0 where invalid)."""
    z = np.exp(-alpha * tree.depth).sum() if normalized else 1.0
    t = tree_tables(tree, len(tree.leaf_of))
    return np.where(t.path_valid, np.exp(-alpha * t.path_depth) / z, 0.0)


def hxe_weights(tree: CodonTree, alpha: float, normalized: bool) -> np.ndarray:
    """Telescoped HXE: w_leaf = lambda_leaf, w_j = lambda_j - lambda_{j-1} above it."""
    lam = node_lambdas(tree, alpha, normalized)
    w = lam.copy()
    w[:, 1:] -= lam[:, :-1] * (lam[:, 1:] != 0)
    return w


def leaf_weights(tree: CodonTree) -> np.ndarray:
    """Plain cross-entropy: all weight on the leaf."""
    w = np.zeros(tree.paths.shape)
    w[:, 0] = 1.0
    return w


def parent_group_weights(tree: CodonTree) -> np.ndarray:
    """-log P(parent group of the target): the amino acid for a sense codon in HELM's tree,
    the start or stop group for start/stop codons, the target itself for a token whose
    parent is the root (there is no coarser group to score)."""
    w = np.zeros(tree.paths.shape)
    if tree.paths.shape[1] == 1:  # the flat tree: every parent is the root
        w[:, 0] = 1.0
        return w
    has_parent = tree.paths[:, 1] >= 0
    w[has_parent, 1] = 1.0
    w[~has_parent, 0] = 1.0
    return w


def soft_label_weights(tree: CodonTree, beta: float) -> np.ndarray:
    """u[t, j] such that sum_i y_i x_i = sum_j u[t, j] * X(n_j) for any per-token x, with
    y_i proportional to exp(-beta d(i, t) / d_max), d(t, t) = 0, d(i, t) = height minus the
    depth of the lowest common ancestor, and d_max = height.

    Tokens whose only common ancestor with t is the root get no mass: for HELM's tree a
    codon target spreads mass over codons only, never onto <pad> or <eos>, and a special
    target stays one-hot. On the flat tree this is plain cross-entropy for any beta.
    """
    t = tree_tables(tree, len(tree.leaf_of))
    height = tree.height
    distance = np.where(np.arange(t.path_depth.shape[1]) == 0, 0, height - t.path_depth)
    per_leaf = np.where(t.path_valid, np.exp(-beta * distance / height), 0.0)
    # Leaves whose lowest common ancestor with t is slot j: under n_j but not n_{j-1}.
    count = t.leaves_under.astype(float)
    count[:, 1:] -= t.leaves_under[:, :-1] * t.path_valid[:, 1:]
    per_leaf /= (per_leaf * count).sum(axis=1, keepdims=True)
    u = per_leaf.copy()
    u[:, :-1] -= per_leaf[:, 1:]
    return u
