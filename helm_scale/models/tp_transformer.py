"""The transformer of helm_scale.models.transformer with megatron-core's tensor-parallel
layers: what the trainer builds for ``model.arch: transformer`` at every TP size.

The network and its block are transformer.Transformer's; ``TensorParallel`` is the layer
factory that makes them tensor-parallel: the word embedding and the head are vocab
parallel, QKV / fc1 column parallel, the attention and MLP outputs row parallel, and with
sequence parallelism the activations between them are sharded along the sequence.

  TensorParallelTransformer(config, *, sequence_parallel=False)
      .forward(...) -> logits_shard [b, s, padded_vocab_size / TP]: this TP rank's
         contiguous vocab slice, the input of helm_scale.losses (never gathered). No loss in the model.

megatron's parallel state must be initialised first (helm_scale.parallel.init_parallel);
weights are always initialised on the CPU from the default generator, so one seed gives
the same full weights at every TP size.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, parallel_state, tensor_parallel
from megatron.core.utils import init_method_normal, scaled_init_method_normal
from torch import nn

from helm_scale.models.config import ModelConfig
from helm_scale.models.layers import DTYPES
from helm_scale.models.transformer import Transformer


def _replicated(param: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    """A replicated parameter used on a sequence slice: its gradient is partial on each TP
    rank; megatron's copy_to_tensor_model_parallel_region (identity forward, all-reduce
    backward) completes it inside autograd, which works under DDP and every ZeRO stage alike."""
    if not sequence_parallel:
        return param
    return tensor_parallel.copy_to_tensor_model_parallel_region(
        param, group=parallel_state.get_tensor_model_parallel_group())


class _LayerNorm(nn.LayerNorm):
    """LayerNorm whose replicated parameters get TP-summed gradients under sequence parallel."""

    def __init__(self, size: int, eps: float, sequence_parallel: bool, dtype: torch.dtype):
        super().__init__(size, eps=eps, dtype=dtype)
        self.sequence_parallel = sequence_parallel

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, _replicated(self.weight, self.sequence_parallel),
                            _replicated(self.bias, self.sequence_parallel), self.eps)


class _ColumnLinear(tensor_parallel.ColumnParallelLinear):
    """Returns its output alone (megatron returns (output, bias))."""

    def forward(self, x, tied_weight=None):
        return super().forward(x, weight=tied_weight)[0]


class _RowLinear(tensor_parallel.RowParallelLinear):
    """Returns its output with the bias added here, marked replicated under sequence parallel
    (megatron would leave the bias's gradient partial on each rank)."""

    def __init__(self, *args, sequence_parallel: bool, **kwargs):
        super().__init__(*args, input_is_parallel=True, skip_bias_add=True, **kwargs)
        self.sequence_parallel = sequence_parallel

    def forward(self, x):
        out, bias = super().forward(x)
        return out + _replicated(bias, self.sequence_parallel)

    def _forward_impl(self, input, weight, *args, **kwargs):
        # megatron 0.16 calls its matmul with tp_group=None, which then warns on rank 0
        # only; under torch.compile that warning is a graph break in every block (on one
        # rank). The group is the layer's own, so the result is unchanged.
        kwargs["tp_group"] = self.tp_group
        return super()._forward_impl(input, weight, *args, **kwargs)


class TensorParallel:
    """transformer.SingleDevice's interface over megatron-core's layers, at the TP size of
    megatron's parallel state."""

    def __init__(self, config: ModelConfig, sequence_parallel: bool):
        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("megatron parallel state is not initialised: call "
                               "helm_scale.parallel.init_parallel (or initialize_model_parallel) first")
        self.tp = parallel_state.get_tensor_model_parallel_world_size()
        config.validate_for_tp(self.tp)
        self.config, self.dtype = config, DTYPES[config.params_dtype]
        self.sequence_parallel = sequence_parallel and self.tp > 1
        self.mp = ModelParallelConfig(tensor_model_parallel_size=self.tp, sequence_parallel=self.sequence_parallel,
                                      use_cpu_initialization=True, perform_initialization=True,
                                      params_dtype=self.dtype)
        self.init = init_method_normal(config.init_std)
        self.out_init = scaled_init_method_normal(config.init_std, config.num_layers)

    def embedding(self, rows: int, width: int) -> nn.Module:
        return tensor_parallel.VocabParallelEmbedding(rows, width, init_method=self.init, config=self.mp)

    def position_table(self, rows: int, width: int) -> nn.Parameter:
        table = nn.Parameter(torch.empty(rows, width, dtype=self.dtype))
        with torch.no_grad():  # same generator and order as megatron's CPU init of the other weights
            table.copy_(self.init(torch.empty(rows, width)))
        return table

    def norm(self, width: int) -> nn.Module:
        return _LayerNorm(width, self.config.layernorm_eps, self.sequence_parallel, self.dtype)

    def column(self, n_in: int, n_out: int) -> nn.Module:
        return _ColumnLinear(n_in, n_out, config=self.mp, init_method=self.init, bias=True)

    def row(self, n_in: int, n_out: int) -> nn.Module:
        return _RowLinear(n_in, n_out, config=self.mp, init_method=self.out_init, bias=True,
                          sequence_parallel=self.sequence_parallel)

    def head(self, width: int, vocab: int, tied: bool) -> nn.Module:
        # Gathers the sequence under SP; the logits stay split over the vocabulary.
        return _ColumnLinear(width, vocab, config=self.mp, init_method=self.init, bias=False,
                             skip_weight_param_allocation=tied)

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence_parallel:
            return x
        return tensor_parallel.scatter_to_sequence_parallel_region(
            x, group=parallel_state.get_tensor_model_parallel_group())

    def dropout_rng(self, sharded: bool):
        """Dropout on TP-sharded activations (heads, or the sequence under SP) needs a
        different mask per TP rank: megatron's model-parallel RNG stream gives one."""
        return tensor_parallel.get_cuda_rng_tracker().fork() if sharded else contextlib.nullcontext()


def _drop_empty_extra_state(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k, v in state_dict.items() if k.endswith("._extra_state") and v is None]:
        del state_dict[key]


def _restore_empty_extra_state(module, state_dict, prefix, *args) -> None:
    for name, sub in module.named_modules(prefix=prefix.rstrip(".")):
        if type(sub).get_extra_state is not nn.Module.get_extra_state:
            state_dict.setdefault(f"{name}._extra_state", None)


class TensorParallelTransformer(Transformer):
    def __init__(self, config: ModelConfig, *, sequence_parallel: bool = False):
        super().__init__(config, TensorParallel(config, sequence_parallel))
        # megatron's linears report an extra state (Transformer Engine's fp8 metadata) that is
        # always None here: leave it out of state dicts so that checkpoints hold tensors only
        # (DeepSpeed's universal conversion fails on a None, DCP would pickle it).
        self.register_state_dict_post_hook(_drop_empty_extra_state)
        self.register_load_state_dict_pre_hook(_restore_empty_extra_state)
