"""Hierarchical losses for codon language models (HELM), vocab-parallel.

Public API: LossConfig, build_loss, HierarchicalLoss, LossOutput, metric_means,
reduce_metric_sums, perplexity, global_token_count, check_targets_in_vocabulary,
VocabParallelHXE, OBJECTIVES.
"""
from helm_scale.losses.config import OBJECTIVES, LossConfig

# Everything else imports torch: loaded on first use, so that a training config (which
# needs only LossConfig) loads without it.
_LAZY = {
    "VocabParallelHXE": "hxe",
    "LossOutput": "metrics", "global_token_count": "metrics", "metric_means": "metrics",
    "reduce_metric_sums": "metrics", "perplexity": "metrics",
    "HierarchicalLoss": "objectives", "build_loss": "objectives", "check_targets_in_vocabulary": "objectives",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'helm_scale.losses' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"helm_scale.losses.{_LAZY[name]}"), name)


__all__ = ["OBJECTIVES", "LossConfig"] + list(_LAZY)
