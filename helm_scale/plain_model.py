"""The same network as helm_scale.model.HelmTransformer, in plain PyTorch on one device.

This is the form exported weights are used in (helm_scale.export): evaluation,
generation and other people's code load it with no process group, megatron-core or
DeepSpeed. Parameter names and shapes are those of HelmTransformer's full (TP-gathered)
state dict; tests check that both give the same logits.

  PlainTransformer(config)
      .forward(input_ids, position_ids=None, segment_ids=None, padding_mask=None)
          -> logits [b, s, padded_vocab_size]
      .hidden_states(same arguments) -> [b, s, hidden_size], after the final norm
  build_attention_mask, rotary_tables, rotate: shared with the tensor-parallel model
  build_plain_model(config) -> PlainTransformer, or LstmLM / MambaLM / HyenaLM for arch
      "lstm" / "mamba" / "hyena" (helm_scale.lstm, helm_scale.mamba, helm_scale.hyena)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helm_scale.model_config import DTYPES, ModelConfig


def build_attention_mask(segment_ids: torch.Tensor | None, padding_mask: torch.Tensor | None,
                         causal: bool) -> tuple[torch.Tensor | None, bool]:
    """SDPA mask [b, 1, s, s] (True = may attend) and SDPA's is_causal flag.

    With segment_ids, a token sees only its own segment (and, if causal, its past).
    Otherwise padding_mask (True at padding) hides padded keys. Every query keeps its own
    key, so no row is empty (an empty row makes SDPA return NaN). Without either, no mask
    is built and SDPA gets is_causal, which keeps its flash kernels on GPU.
    """
    if segment_ids is None and padding_mask is None:
        return None, causal
    if segment_ids is not None:
        allowed = segment_ids[:, :, None] == segment_ids[:, None, :]
    else:
        s = padding_mask.shape[1]
        allowed = ~padding_mask.bool()[:, None, :].expand(-1, s, -1)
        allowed = allowed | torch.eye(s, dtype=torch.bool, device=padding_mask.device)
    if causal:
        allowed = allowed.tril()
    return allowed[:, None], False


def rotary_tables(position_ids: torch.Tensor, config: ModelConfig, dtype: torch.dtype):
    """cos, sin [b, 1, s, head_dim] for per-token positions (packed rows restart them, so
    megatron's RotaryEmbedding, which assumes positions 0..s, does not fit). Computed in
    fp32 from the positions: a bf16 table would lose whole positions past ~256."""
    d = config.head_dim
    inv_freq = config.rotary_base ** (-torch.arange(0, d, 2, device=position_ids.device, dtype=torch.float32) / d)
    angles = position_ids.float()[..., None] * inv_freq  # [b, s, d/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # [b, 1, s, d]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotary (GPT-NeoX / megatron non-interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, f, dtype = cfg.hidden_size, cfg.ffn_hidden_size, DTYPES[cfg.params_dtype]
        self.cfg = cfg
        self.norm1 = nn.LayerNorm(h, eps=cfg.layernorm_eps, dtype=dtype)
        self.qkv = nn.Linear(h, 3 * h, dtype=dtype)  # rows [head, (q, k, v), head_dim]
        self.proj = nn.Linear(h, h, dtype=dtype)
        self.norm2 = nn.LayerNorm(h, eps=cfg.layernorm_eps, dtype=dtype)
        self.fc1 = nn.Linear(h, f, dtype=dtype)
        self.fc2 = nn.Linear(f, h, dtype=dtype)

    def forward(self, x, mask, is_causal, rotary):
        b, s, _ = x.shape
        heads, d = self.cfg.num_heads, self.cfg.head_dim
        q, k, v = self.qkv(self.norm1(x)).view(b, s, heads, 3, d).permute(3, 0, 2, 1, 4).unbind(0)
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        x = x + self.proj(y.transpose(1, 2).reshape(b, s, heads * d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class LanguageModel(nn.Module):
    """What every single-device model shares: logits are its hidden states times the
    (tied or separate) output embedding. Subclasses define word_embeddings, head (if
    untied) and hidden_states()."""

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hidden_states(input_ids, position_ids, segment_ids, padding_mask)
        weight = self.word_embeddings.weight if self.config.tie_embeddings else self.head.weight
        return F.linear(x, weight)


class PlainTransformer(LanguageModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, dtype = config.hidden_size, DTYPES[config.params_dtype]
        self.config = config
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, h, dtype=dtype)
        if config.position == "learned":
            self.position_embeddings = nn.Parameter(torch.zeros(config.max_seq_len, h, dtype=dtype))
        self.layers = nn.ModuleList(_Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(h, eps=config.layernorm_eps, dtype=dtype)
        if not config.tie_embeddings:
            self.head = nn.Linear(h, config.padded_vocab_size, bias=False, dtype=dtype)

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None,
                      padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s = input_ids.shape
        if s > self.config.max_seq_len:
            raise ValueError(f"sequence length {s} exceeds max_seq_len {self.config.max_seq_len}")
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device).expand(b, s)
        x = self.word_embeddings(input_ids)
        if self.config.position == "learned":
            x = x + F.embedding(position_ids, self.position_embeddings)
        mask, is_causal = build_attention_mask(segment_ids, padding_mask, self.config.attention == "causal")
        rotary = rotary_tables(position_ids, self.config, x.dtype) if self.config.position == "rotary" else None
        for layer in self.layers:
            x = layer(x, mask, is_causal, rotary)
        return self.final_norm(x)


def build_plain_model(config: ModelConfig) -> nn.Module:
    """The single-device model for ``config.arch`` (what an export loads into)."""
    if config.arch == "lstm":
        from helm_scale.lstm import LstmLM
        return LstmLM(config)
    if config.arch == "mamba":
        from helm_scale.mamba import MambaLM
        return MambaLM(config)
    if config.arch == "hyena":
        from helm_scale.hyena import HyenaLM
        return HyenaLM(config)
    return PlainTransformer(config)
