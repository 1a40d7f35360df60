"""HELM's transformer: GPT-2 style pre-LayerNorm blocks, GELU MLP, learned absolute
positions (HELM) or rotary, causal (CLM) or bidirectional (MLM) attention through SDPA.

One network for one device and for tensor parallelism: its layers come from a factory.
``SingleDevice`` (here) gives torch.nn layers; ``TensorParallel``
(helm_scale.models.tp_transformer) gives megatron-core's vocab-parallel embedding and head
and column- / row-parallel linears behind the same small interface (linears return their
output with the bias added), plus the sequence-parallel scatter and the dropout RNG
streams. The block's arithmetic is written once, below, and runs in megatron's
[s, b, h] layout for both, so sequence parallelism can shard dim 0. Parameter names are
the same for both: an export (the TP model's full, gathered state dict) loads into
Transformer with no megatron import.

  Transformer(config)                          the single-device network (what exports load)
      .forward / .hidden_states                as helm_scale.models.base.LanguageModel
      .decode(input_ids, state=None) -> (logits [b, V], KVCache)   causal: keys and values
          cached, each step runs the new positions through the same blocks
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from helm_scale.models.base import LanguageModel
from helm_scale.models.config import ModelConfig
from helm_scale.models.layers import DTYPES, build_attention_mask, rotary_tables, rotate


class _Head(nn.Linear):
    """A separate output embedding (torch.nn.Linear's init: exports overwrite it)."""

    def forward(self, x, tied_weight=None):
        return F.linear(x, self.weight)


class _TiedHead(nn.Module):
    """The output embedding is the word embedding: no weight of its own."""

    def forward(self, x, tied_weight):
        return F.linear(x, tied_weight)


class SingleDevice:
    """Layers on one device, torch.nn's own (and their default init: weights come from an
    export or a checkpoint). The tensor-parallel factory mirrors every method."""

    tp, sequence_parallel = 1, False

    def __init__(self, config: ModelConfig):
        self.config, self.dtype = config, DTYPES[config.params_dtype]

    def embedding(self, rows: int, width: int) -> nn.Module:
        return nn.Embedding(rows, width, dtype=self.dtype)

    def position_table(self, rows: int, width: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(rows, width, dtype=self.dtype))

    def norm(self, width: int) -> nn.Module:
        return nn.LayerNorm(width, eps=self.config.layernorm_eps, dtype=self.dtype)

    def column(self, n_in: int, n_out: int) -> nn.Module:
        """A linear layer whose outputs TP splits across ranks."""
        return nn.Linear(n_in, n_out, dtype=self.dtype)

    def row(self, n_in: int, n_out: int) -> nn.Module:
        """A linear layer whose inputs TP splits across ranks (its outputs summed over them)."""
        return nn.Linear(n_in, n_out, dtype=self.dtype)

    def head(self, width: int, vocab: int, tied: bool) -> nn.Module:
        return _TiedHead() if tied else _Head(width, vocab, bias=False, dtype=self.dtype)

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """[s, b, h] -> this rank's slice of the sequence (sequence parallel)."""
        return x

    def dropout_rng(self, sharded: bool):
        """Where dropout masks come from; activations sharded over TP ranks need a mask per rank."""
        return contextlib.nullcontext()


@dataclass
class LayerCache:
    """One block's keys and values [b, heads, positions, head_dim] so far."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is not None:
            k, v = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
        self.keys, self.values = k, v
        return k, v


@dataclass
class KVCache:
    """What cached decoding carries: the next position and every block's LayerCache."""

    position: int
    layers: list[LayerCache]

    def rows(self, keep: torch.Tensor) -> KVCache:
        return KVCache(self.position, [LayerCache(c.keys[keep], c.values[keep]) for c in self.layers])


class Block(nn.Module):
    """x += Attention(LN(x)); x += MLP(LN(x)), on [s, b, h] (under sequence parallel, this
    rank's slice of s outside the attention and MLP)."""

    def __init__(self, cfg: ModelConfig, parallel):
        super().__init__()
        h = cfg.hidden_size
        self.cfg, self.parallel, self.local_heads = cfg, parallel, cfg.num_heads // parallel.tp
        self.norm1 = parallel.norm(h)
        # Rows grouped per head as [head, (q, k, v), head_dim]: a contiguous TP slice holds
        # whole heads with their q, k and v, and the full matrix is the same at every TP.
        self.qkv = parallel.column(h, 3 * h)
        self.proj = parallel.row(h, h)
        self.norm2 = parallel.norm(h)
        self.fc1 = parallel.column(h, cfg.ffn_hidden_size)
        self.fc2 = parallel.row(cfg.ffn_hidden_size, h)

    def _dropout(self, x):
        if self.training and self.cfg.dropout:
            with self.parallel.dropout_rng(self.parallel.sequence_parallel):
                x = F.dropout(x, self.cfg.dropout)
        return x

    def _attention(self, x, mask, is_causal, rotary, cache):
        qkv = self.qkv(x)  # [s, b, local_heads * 3 * d]; s is the full sequence here
        s, b = qkv.shape[:2]
        q, k, v = qkv.view(s, b, self.local_heads, 3, self.cfg.head_dim).permute(3, 1, 2, 0, 4).unbind(0)
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if cache is not None:
            k, v = cache.append(k, v)
        p = self.cfg.dropout if self.training else 0.0
        with self.parallel.dropout_rng(p > 0):  # heads differ per TP rank: so do their dropout masks
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        return y.permute(2, 0, 1, 3).reshape(s, b, self.local_heads * self.cfg.head_dim)

    def forward(self, x, mask, is_causal, rotary, cache: LayerCache | None = None):
        x = x + self._dropout(self.proj(self._attention(self.norm1(x), mask, is_causal, rotary, cache)))
        return x + self._dropout(self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh")))


class Transformer(LanguageModel):
    def __init__(self, config: ModelConfig, parallel=None):
        super().__init__()
        parallel = parallel or SingleDevice(config)
        h = config.hidden_size
        self.config, self.parallel, self.sequence_parallel = config, parallel, parallel.sequence_parallel
        # Built in this order at every TP size: megatron initialises each weight in full on
        # the CPU from the default generator, so one seed gives the same full weights.
        self.word_embeddings = parallel.embedding(config.padded_vocab_size, h)
        if config.position == "learned":
            self.position_embeddings = parallel.position_table(config.max_seq_len, h)
        self.layers = nn.ModuleList(Block(config, parallel) for _ in range(config.num_layers))
        self.final_norm = parallel.norm(h)
        self.head = parallel.head(h, config.padded_vocab_size, config.tie_embeddings)

    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token (+ position) embeddings in [s, b, h], this rank's slice under sequence parallel."""
        x = self.word_embeddings(input_ids)  # [b, s, h] (TP: summed over the vocab shards)
        if self.config.position == "learned":
            x = x + F.embedding(position_ids, self.position_embeddings)
        x = self.parallel.scatter(x.transpose(0, 1).contiguous())
        if self.training and self.config.dropout:
            with self.parallel.dropout_rng(self.sequence_parallel):
                x = F.dropout(x, self.config.dropout)
        return x

    def _rotary(self, position_ids: torch.Tensor, dtype: torch.dtype):
        return rotary_tables(position_ids, self.config, dtype) if self.config.position == "rotary" else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """hidden_states' [b, s, h] view -> logits [b, s, V] (TP: this rank's vocab slice;
        the head gathers the sequence under SP)."""
        tied = self.word_embeddings.weight if self.config.tie_embeddings else None
        return self.head(x.transpose(0, 1), tied).transpose(0, 1).contiguous()

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None,
                      padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[b, s, h], a view of the blocks' [s, b, h] (under SP: this rank's slice of s)."""
        return self.final_norm(self._blocks(input_ids, position_ids, segment_ids, padding_mask)).transpose(0, 1)

    def _blocks(self, input_ids, position_ids, segment_ids, padding_mask) -> torch.Tensor:
        b, s = input_ids.shape
        if s > self.config.max_seq_len:
            raise ValueError(f"sequence length {s} exceeds max_seq_len {self.config.max_seq_len}")
        if self.sequence_parallel and s % self.parallel.tp:
            raise ValueError(f"sequence parallel needs the sequence length ({s}) divisible by TP ({self.parallel.tp})")
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device).expand(b, s)
        x = self._embed(input_ids, position_ids)
        mask, is_causal = build_attention_mask(segment_ids, padding_mask, self.config.attention == "causal")
        rotary = self._rotary(position_ids, x.dtype)
        for layer in self.layers:
            x = layer(x, mask, is_causal, rotary)
        return x

    def sequence_flops(self, seq_len: int) -> float:
        # QK^T and attention x V: 2 * 2 * S * h per token and layer forward, times 3 with
        # the backward. Causal masking is not discounted (PaLM convention).
        return 12.0 * self.config.num_layers * self.config.hidden_size * seq_len

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, state: KVCache | None = None):
        """Logits after the last of ``input_ids`` [b, s] and the cache to continue from;
        state None: a prompt from position 0. Only the new positions run."""
        if self.config.attention != "causal":
            raise ValueError("decoding needs a causal (CLM) transformer; this one is bidirectional")
        if self.sequence_parallel:
            raise ValueError("decoding runs without sequence parallelism")
        start = 0 if state is None else state.position
        b, s = input_ids.shape
        if start + s > self.config.max_seq_len:
            raise ValueError(f"sequence length {start + s} exceeds max_seq_len {self.config.max_seq_len}")
        caches = [LayerCache() for _ in self.layers] if state is None else \
            [LayerCache(c.keys, c.values) for c in state.layers]  # the caller's state stays as it was
        positions = torch.arange(start, start + s, device=input_ids.device).expand(b, s)
        if start and s > 1:  # several new tokens: each sees the cache and its own past
            keys = torch.arange(start + s, device=input_ids.device)
            mask, is_causal = (keys[None] <= keys[start:, None])[None, None], False
        else:  # a prompt attends causally; one new token sees every cached key
            mask, is_causal = None, s > 1
        x = self._embed(input_ids, positions)
        rotary = self._rotary(positions, x.dtype)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, mask, is_causal, rotary, cache)
        return self.logits(self.final_norm(x[-1:]).transpose(0, 1))[:, 0], KVCache(start + s, caches)
