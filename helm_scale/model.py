"""HELM's transformer language model, built from megatron-core tensor-parallel layers.

GPT-2 style: pre-LayerNorm blocks, GELU MLP, learned absolute positions (HELM) or
rotary, causal (CLM) or bidirectional (MLM) attention through PyTorch SDPA. The same
code runs at any tensor-parallel size: the word embedding and the head are vocab
parallel, QKV / fc1 column parallel, the attention and MLP outputs row parallel.

Public API:
  ModelConfig, pad_vocab        (helm_scale.model_config)
  build_attention_mask          (helm_scale.plain_model, shared with the single-device model)
  HelmTransformer(config, *, sequence_parallel=False)
      .forward(input_ids, position_ids=None, segment_ids=None, padding_mask=None)
      -> logits_shard [b, s, padded_vocab_size / TP]: this TP rank's contiguous vocab slice,
         the input of helm_scale.losses (never gathered). No loss in the model.
  build_model(config, sequence_parallel=False)  what the trainer builds: HelmTransformer, or
      the single-device model of an arch with no TP form (lstm, mamba, hyena: TP 1 only)

megatron's parallel state must be initialised first (helm_scale.parallel.init_parallel);
weights are always initialised on the CPU from the default generator, so one seed gives
the same full weights at every TP size. Activations run in megatron's [s, b, h] layout,
so that sequence parallelism shards dim 0.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, parallel_state, tensor_parallel
from megatron.core.utils import init_method_normal, scaled_init_method_normal
from torch import nn

from helm_scale.model_config import DTYPES, PLAIN_ONLY, ModelConfig, pad_vocab
from helm_scale.plain_model import build_attention_mask, build_plain_model, rotary_tables, rotate

__all__ = ["HelmTransformer", "ModelConfig", "build_attention_mask", "build_model", "pad_vocab"]


class _LayerNorm(nn.LayerNorm):
    """LayerNorm whose replicated parameters get TP-summed gradients under sequence parallel.

    Each TP rank then normalises a different slice of the sequence, so its gradient is
    partial; megatron's copy_to_tensor_model_parallel_region (identity forward, all-reduce
    backward) completes it inside autograd, which works under DDP and every ZeRO stage alike.
    """

    def __init__(self, size: int, eps: float, sequence_parallel: bool, dtype: torch.dtype):
        super().__init__(size, eps=eps, dtype=dtype)
        self.sequence_parallel = sequence_parallel

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, _replicated(self.weight, self.sequence_parallel),
                            _replicated(self.bias, self.sequence_parallel), self.eps)


def _replicated(param: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    if not sequence_parallel:
        return param
    return tensor_parallel.copy_to_tensor_model_parallel_region(
        param, group=parallel_state.get_tensor_model_parallel_group())


class _RowParallelLinear(tensor_parallel.RowParallelLinear):
    """megatron 0.16's RowParallelLinear calls its matmul with tp_group=None, which then
    warns on rank 0 only; under torch.compile that warning is a graph break in every block
    (on one rank). The group is the layer's own, so the result is unchanged."""

    def _forward_impl(self, input, weight, *args, **kwargs):
        kwargs["tp_group"] = self.tp_group
        return super()._forward_impl(input, weight, *args, **kwargs)


def _dropout_rng(sharded: bool):
    """Dropout on TP-sharded activations (heads, or the sequence under SP) needs a
    different mask per TP rank: megatron's model-parallel RNG stream gives one."""
    return tensor_parallel.get_cuda_rng_tracker().fork() if sharded else contextlib.nullcontext()


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mp: ModelParallelConfig, tp: int):
        super().__init__()
        h, dtype, sp = cfg.hidden_size, DTYPES[cfg.params_dtype], mp.sequence_parallel
        init, out_init = init_method_normal(cfg.init_std), scaled_init_method_normal(cfg.init_std, cfg.num_layers)
        self.cfg, self.sequence_parallel, self.local_heads = cfg, sp, cfg.num_heads // tp
        self.norm1 = _LayerNorm(h, cfg.layernorm_eps, sp, dtype)
        # Rows grouped per head as [head, (q, k, v), head_dim]: a contiguous TP slice holds
        # whole heads with their q, k and v, and the full matrix is the same at every TP.
        self.qkv = tensor_parallel.ColumnParallelLinear(h, 3 * h, config=mp, init_method=init, bias=True)
        self.proj = _RowParallelLinear(h, h, config=mp, init_method=out_init, bias=True,
                                       input_is_parallel=True, skip_bias_add=True)
        self.norm2 = _LayerNorm(h, cfg.layernorm_eps, sp, dtype)
        self.fc1 = tensor_parallel.ColumnParallelLinear(h, cfg.ffn_hidden_size, config=mp,
                                                        init_method=init, bias=True)
        self.fc2 = _RowParallelLinear(cfg.ffn_hidden_size, h, config=mp, init_method=out_init,
                                      bias=True, input_is_parallel=True, skip_bias_add=True)

    def _residual(self, out_and_bias):
        out, bias = out_and_bias  # the bias is added here so that it too is marked replicated
        out = out + _replicated(bias, self.sequence_parallel)
        if self.training and self.cfg.dropout:
            with _dropout_rng(self.sequence_parallel):
                out = F.dropout(out, self.cfg.dropout)
        return out

    def _attention(self, x, mask, is_causal, rotary):
        qkv, _ = self.qkv(x)  # [s, b, local_heads * 3 * d]; s is the full sequence here
        s, b = qkv.shape[:2]
        q, k, v = qkv.view(s, b, self.local_heads, 3, self.cfg.head_dim).permute(3, 1, 2, 0, 4).unbind(0)
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        p = self.cfg.dropout if self.training else 0.0
        with _dropout_rng(p > 0):  # heads differ per TP rank: so do their dropout masks
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        return y.permute(2, 0, 1, 3).reshape(s, b, self.local_heads * self.cfg.head_dim)

    def forward(self, x, mask, is_causal, rotary):
        x = x + self._residual(self.proj(self._attention(self.norm1(x), mask, is_causal, rotary)))
        h, _ = self.fc1(self.norm2(x))
        return x + self._residual(self.fc2(F.gelu(h, approximate="tanh")))


def _drop_empty_extra_state(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k, v in state_dict.items() if k.endswith("._extra_state") and v is None]:
        del state_dict[key]


def _restore_empty_extra_state(module, state_dict, prefix, *args) -> None:
    for name, sub in module.named_modules(prefix=prefix.rstrip(".")):
        if type(sub).get_extra_state is not nn.Module.get_extra_state:
            state_dict.setdefault(f"{name}._extra_state", None)


class HelmTransformer(nn.Module):
    def __init__(self, config: ModelConfig, *, sequence_parallel: bool = False):
        super().__init__()
        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("megatron parallel state is not initialised: call "
                               "helm_scale.parallel.init_parallel (or initialize_model_parallel) first")
        tp = parallel_state.get_tensor_model_parallel_world_size()
        config.validate_for_tp(tp)
        self.config, self.tp = config, tp
        self.sequence_parallel = sequence_parallel and tp > 1
        h, dtype = config.hidden_size, DTYPES[config.params_dtype]
        mp = ModelParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=self.sequence_parallel,
                                 use_cpu_initialization=True, perform_initialization=True, params_dtype=dtype)
        init = init_method_normal(config.init_std)
        self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
            config.padded_vocab_size, h, init_method=init, config=mp)
        if config.position == "learned":
            self.position_embeddings = nn.Parameter(torch.empty(config.max_seq_len, h, dtype=dtype))
            with torch.no_grad():  # same generator and order as megatron's CPU init of the other weights
                self.position_embeddings.copy_(init(torch.empty(config.max_seq_len, h)))
        self.layers = nn.ModuleList(_Block(config, mp, tp) for _ in range(config.num_layers))
        self.final_norm = _LayerNorm(h, config.layernorm_eps, self.sequence_parallel, dtype)
        self.head = tensor_parallel.ColumnParallelLinear(
            h, config.padded_vocab_size, config=mp, init_method=init, bias=False,
            skip_weight_param_allocation=config.tie_embeddings)
        # megatron's linears report an extra state (Transformer Engine's fp8 metadata) that is
        # always None here: leave it out of state dicts so that checkpoints hold tensors only
        # (DeepSpeed's universal conversion fails on a None, DCP would pickle it).
        self.register_state_dict_post_hook(_drop_empty_extra_state)
        self.register_load_state_dict_pre_hook(_restore_empty_extra_state)

    def embedding_parameter_names(self) -> set[str]:
        """Parameters that are lookup tables (the optimizer may exempt them from decay)."""
        names = {"word_embeddings.weight"}
        return names | ({"position_embeddings"} if self.config.position == "learned" else set())

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s = input_ids.shape
        if s > self.config.max_seq_len:
            raise ValueError(f"sequence length {s} exceeds max_seq_len {self.config.max_seq_len}")
        if self.sequence_parallel and s % self.tp:
            raise ValueError(f"sequence parallel needs the sequence length ({s}) divisible by TP ({self.tp})")
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device).expand(b, s)
        x = self.word_embeddings(input_ids)  # [b, s, h], summed over TP ranks
        if self.config.position == "learned":
            x = x + F.embedding(position_ids, self.position_embeddings)
        x = x.transpose(0, 1).contiguous()  # megatron's [s, b, h]
        if self.sequence_parallel:
            x = tensor_parallel.scatter_to_sequence_parallel_region(
                x, group=parallel_state.get_tensor_model_parallel_group())
        if self.training and self.config.dropout:
            with _dropout_rng(self.sequence_parallel):
                x = F.dropout(x, self.config.dropout)
        mask, is_causal = build_attention_mask(segment_ids, padding_mask, self.config.attention == "causal")
        rotary = rotary_tables(position_ids, self.config, x.dtype) if self.config.position == "rotary" else None
        for layer in self.layers:
            x = layer(x, mask, is_causal, rotary)
        weight = self.word_embeddings.weight if self.config.tie_embeddings else None
        logits, _ = self.head(self.final_norm(x), weight=weight)  # [s, b, V/TP]; gathers s under SP
        return logits.transpose(0, 1).contiguous()


def build_model(config: ModelConfig, sequence_parallel: bool = False) -> nn.Module:
    """The training model ``config.arch`` names (after init_parallel, like HelmTransformer)."""
    if config.arch in PLAIN_ONLY:
        config.validate_for_tp(parallel_state.get_tensor_model_parallel_world_size())
        return build_plain_model(config)
    return HelmTransformer(config, sequence_parallel=sequence_parallel)
