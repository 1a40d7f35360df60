"""Hyena language model over codons (``model.arch: hyena``), HELM's third backbone
(configs/hyena_clm.yaml, configs/hyena_mlm.yaml): attention replaced by the Hyena operator
of order 2, in plain PyTorch.

  HyenaLM(config)                 models.mixer_lm.MixerLM: forward -> logits, hidden_states
  long_conv(v, k, causal)         y_t = sum_s k[t - s] v_s by FFT (what the operator mixes with)

Block (pre-norm): x += Hyena(LN(x)); x += fc2(gelu(fc1(LN(x)))), ffn_hidden_size wide.
The operator projects to three streams (x0, x1, v), mixes each over a few neighbours with
a short depthwise convolution (SHORT_TAPS), then y = x0 * (k * (x1 * v) + bias * x1 * v)
where ``k * .`` is a per-channel convolution as long as the sequence. The long filter is
implicit: a small MLP with sine activations maps positional features of each lag (the lag
over max_seq_len and FILTER_BANDS sine / cosine pairs) to one tap per channel, times an
exponential decay window whose rate differs per channel (fast to slow). No position table:
the filter is the position signal (``position: none``; ``learned`` adds HELM's table too).

Causal (CLM): lags 0..s-1 and a left-padded short conv, so no output sees a later input.
Bidirectional (MLM): lags -(s-1)..s-1 (a two-sided filter) and a centred short conv; the
real tokens of right-padded rows see the padding as zeros, exactly as if it were not there.
The FFT is 2s long, so the circular convolution equals the linear one (no wrap-around);
its cost is O(s log s) per channel against O(s^2) for the direct sum. Filters depend on
the lag only (features use max_seq_len, not s), so a prefix gets the same outputs alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from helm_scale.models.config import ModelConfig
from helm_scale.models.layers import DTYPES
from helm_scale.models.mixer_lm import MixerLM, residual_scale_, wide

SHORT_TAPS = 3       # short depthwise filter (HyenaDNA's short_filter_order)
FILTER_BANDS = 16    # sine / cosine pairs of positional features: 1 + 2 * 16 inputs
FILTER_WIDTH = 64    # hidden width of the filter MLP (HyenaDNA's filter_order)
DECAY = (0.3, 1.5, 1e-2)  # the fastest / slowest channel's window falls to 1e-2 at these fractions of max_seq_len
DECAY_SHIFT = 0.05   # floor added to the window, so that no channel's far lags vanish entirely


def long_conv(v: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """v [b, c, s]; k [c, s] (lags 0..s-1) if causal, else [c, 2s-1] (lags -(s-1)..s-1).
    Returns y [b, c, s] in fp32 (fp64 for fp64 inputs) with y_t = sum_s k[lag t - s] v_s (zero outside the lags)."""
    s = v.shape[-1]
    n = 2 * s
    if not causal:  # circular layout: lags 0..s-1, an unused slot, then lags -(s-1)..-1
        k = torch.cat([k[:, s - 1:], k.new_zeros(k.shape[0], 1), k[:, :s - 1]], dim=-1)
    spectrum = torch.fft.rfft(wide(v), n=n) * torch.fft.rfft(wide(k), n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :s]


class _Sine(nn.Module):
    def __init__(self, width: int, dtype: torch.dtype):
        super().__init__()
        self.freq = nn.Parameter(torch.ones(width, dtype=dtype))

    def forward(self, x):
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Per-channel taps k[c, lag] = MLP(features(lag))[c] * window_c(|lag|), and the skip bias."""

    def __init__(self, channels: int, max_len: int, causal: bool, dtype: torch.dtype):
        super().__init__()
        self.max_len, self.causal = max_len, causal
        features = 1 + 2 * FILTER_BANDS
        self.mlp = nn.Sequential(nn.Linear(features, FILTER_WIDTH, dtype=dtype), _Sine(FILTER_WIDTH, dtype),
                                 nn.Linear(FILTER_WIDTH, FILTER_WIDTH, dtype=dtype), _Sine(FILTER_WIDTH, dtype),
                                 nn.Linear(FILTER_WIDTH, channels, bias=False, dtype=dtype))
        fast, slow, target = DECAY
        rates = torch.linspace(math.log(1 / target) / slow, math.log(1 / target) / fast, channels)
        self.register_buffer("rates", rates, persistent=False)  # fixed: not a weight
        self.bias = nn.Parameter(torch.randn(channels, dtype=dtype))

    def lags(self, length: int, device) -> torch.Tensor:
        start = 0 if self.causal else -(length - 1)
        return torch.arange(start, length, device=device, dtype=torch.float32)

    def forward(self, length: int) -> torch.Tensor:
        """Taps [channels, lags] (see long_conv for the lag range), fp32."""
        t = self.lags(length, self.rates.device) / self.max_len
        angle = 2 * math.pi * t[:, None] * torch.arange(1, FILTER_BANDS + 1, device=t.device)
        features = torch.cat([t[:, None], angle.cos(), angle.sin()], dim=-1)
        taps = wide(self.mlp(features.to(self.bias.dtype)))  # [lags, channels]
        window = torch.exp(-t.abs()[:, None] * wide(self.rates)) + DECAY_SHIFT
        return (taps * window).t()


class HyenaOperator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, dtype = cfg.hidden_size, DTYPES[cfg.params_dtype]
        self.causal = cfg.attention == "causal"
        self.in_proj = nn.Linear(h, 3 * h, dtype=dtype)
        self.short_conv = nn.Conv1d(3 * h, 3 * h, SHORT_TAPS, groups=3 * h, dtype=dtype)
        self.filter = ImplicitFilter(h, cfg.max_seq_len, self.causal, dtype)
        self.out_proj = nn.Linear(h, h, dtype=dtype)

    def forward(self, u: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        s = u.shape[1]
        z = self.in_proj(u)
        if keep is not None:  # padding enters each mixing step as zeros
            z = z * keep[..., None]
        left = SHORT_TAPS - 1 if self.causal else (SHORT_TAPS - 1) // 2
        z = self.short_conv(F.pad(z.transpose(1, 2), (left, SHORT_TAPS - 1 - left)))
        x0, x1, v = z.chunk(3, dim=1)  # [b, h, s] each
        v = v * x1
        if keep is not None:
            v = v * keep[:, None]
        v = (long_conv(v, self.filter(s), self.causal) + wide(v) * wide(self.filter.bias)[:, None]).to(u.dtype)
        return self.out_proj((x0 * v).transpose(1, 2))


class HyenaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, f, dtype = cfg.hidden_size, cfg.ffn_hidden_size, DTYPES[cfg.params_dtype]
        self.dropout = cfg.dropout
        self.norm1 = nn.LayerNorm(h, eps=cfg.layernorm_eps, dtype=dtype)
        self.mixer = HyenaOperator(cfg)
        self.norm2 = nn.LayerNorm(h, eps=cfg.layernorm_eps, dtype=dtype)
        self.fc1 = nn.Linear(h, f, dtype=dtype)
        self.fc2 = nn.Linear(f, h, dtype=dtype)
        residual_scale_(self.mixer.out_proj, cfg.num_layers)
        residual_scale_(self.fc2, cfg.num_layers)

    def forward(self, x, keep=None):
        x = x + F.dropout(self.mixer(self.norm1(x), keep), self.dropout, self.training)
        y = self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))
        return x + F.dropout(y, self.dropout, self.training)


class HyenaLM(MixerLM):
    def __init__(self, config: ModelConfig):
        super().__init__(config, "hyena")
        self.layers.extend(HyenaBlock(config) for _ in range(config.num_layers))

    def sequence_flops(self, seq_len: int) -> float:
        # Per layer and channel: three real FFTs of 2S points (~2.5 * 2S log2 2S flops each,
        # shared by the S tokens of a row) and the pointwise products; backward ~2x.
        n = 2 * seq_len
        fft_per_token = 3 * 2.5 * n * math.log2(n) / seq_len
        return 3.0 * self.config.num_layers * self.config.hidden_size * (fft_per_token + 8)
