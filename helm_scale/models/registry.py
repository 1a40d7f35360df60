"""The one place that maps ``model.arch`` to a network.

    build_model(config) -> LanguageModel            the single-device network: what an
        export loads into (no megatron-core import)
    build_training_model(config, sequence_parallel=False)   what the trainer builds after
        init_parallel: the tensor-parallel transformer, or the single-device network of an
        arch with no tensor-parallel form (config.PLAIN_ONLY: TP 1, scaled by DP / ZeRO)
    num_parameters(config, include_embeddings=True), flops_per_token(config, seq_len)
        counted on the network built on the meta device (shapes only, no memory)
"""
from __future__ import annotations

import torch

from helm_scale.models.base import LanguageModel
from helm_scale.models.config import ARCHS, PLAIN_ONLY, ModelConfig
from helm_scale.models.hyena import HyenaLM
from helm_scale.models.lstm import LstmLM
from helm_scale.models.mamba import MambaLM
from helm_scale.models.transformer import Transformer

MODELS: dict[str, type[LanguageModel]] = {"transformer": Transformer, "lstm": LstmLM,
                                          "mamba": MambaLM, "hyena": HyenaLM}
if set(MODELS) != set(ARCHS):
    raise ImportError(f"registry {sorted(MODELS)} and ModelConfig's archs {sorted(ARCHS)} differ")


def build_model(config: ModelConfig) -> LanguageModel:
    return MODELS[config.arch](config)


def build_training_model(config: ModelConfig, sequence_parallel: bool = False) -> LanguageModel:
    if config.arch in PLAIN_ONLY:
        from megatron.core import parallel_state
        config.validate_for_tp(parallel_state.get_tensor_model_parallel_world_size())
        return build_model(config)
    from helm_scale.models.tp_transformer import TensorParallelTransformer  # megatron-core
    return TensorParallelTransformer(config, sequence_parallel=sequence_parallel)


def _on_meta(config: ModelConfig) -> LanguageModel:
    with torch.device("meta"):
        return build_model(config)


def num_parameters(config: ModelConfig, include_embeddings: bool = True) -> int:
    """Exact parameter count of the full model (all TP ranks together)."""
    return _on_meta(config).parameter_count(include_embeddings)


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) for MFU; see LanguageModel.flops_per_token.
    For the transformer: 6 x (L (4h^2 + 2hf) + V_padded h) + 12 L h S."""
    return _on_meta(config).flops_per_token(seq_len)
