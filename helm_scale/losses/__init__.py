"""Hierarchical losses for codon language models (HELM), vocab-parallel.

Public API: LossConfig, build_loss, HierarchicalLoss, LossOutput, metric_means,
reduce_metric_sums, global_token_count, check_targets_in_vocabulary, VocabParallelHXE, OBJECTIVES.
"""
from helm_scale.losses.hxe import VocabParallelHXE
from helm_scale.losses.metrics import (LossOutput, global_token_count, metric_means,
                                      reduce_metric_sums)
from helm_scale.losses.objectives import (OBJECTIVES, HierarchicalLoss, LossConfig, build_loss,
                                          check_targets_in_vocabulary)

__all__ = ["OBJECTIVES", "HierarchicalLoss", "LossConfig", "LossOutput", "VocabParallelHXE",
           "build_loss", "check_targets_in_vocabulary", "global_token_count", "metric_means",
           "reduce_metric_sums"]
