"""Pieces every network of helm_scale.models shares, whatever its parallel layout.

    DTYPES                            ModelConfig.params_dtype name -> torch dtype
    build_attention_mask(segment_ids, padding_mask, causal) -> (SDPA mask or None, is_causal)
    rotary_tables(position_ids, config, dtype) -> (cos, sin); rotate(x, cos, sin)
"""
from __future__ import annotations

import torch

from helm_scale.models.config import DTYPE_NAMES, ModelConfig

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16)))


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
