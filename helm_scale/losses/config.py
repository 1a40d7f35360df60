"""The loss's settings; no torch here, so a training config loads without it.

Objectives (``LossConfig.name``):
  "xe"      plain cross-entropy (the tree only feeds the diagnostics)
  "hxe"     HELM's hierarchical cross-entropy (alpha, normalized)
  "soft"    cross-entropy against tree-distance soft labels (beta); see tables.soft_label_weights
  "aa"      -log P(parent group of the target): the amino acid for a sense codon in HELM's tree
  "hxe+aa"  hxe + aa_weight * aa
The tree ("helm" | "flat" | "random" with tree_seed) shapes every objective; the
random tree is the ablation control.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from helm_scale.codon import TREE_BUILDERS

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
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"LossConfig.{key} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.tree_seed, int):
            raise ValueError(f"LossConfig.tree_seed must be an int, got {self.tree_seed!r}")
        if self.name == "hxe+aa" and self.aa_weight == 0:
            raise ValueError("hxe+aa with aa_weight = 0 is hxe: say name='hxe'")
