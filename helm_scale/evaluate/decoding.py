"""Next-token logits one token at a time, for sampling: cached keys and values for the
transformer, the carried state for the LSTM and Mamba.

    dec = decoder_for(model)            KVCacheDecoder, LstmDecoder, RecurrentDecoder or FullForwardDecoder
    logits = dec.start(ids)             [b, s] prompt -> [b, padded_vocab] at its last position
    logits = dec.step(next_ids, keep)   rows ``keep`` of the batch each take one more token

Without a cache every new token costs a forward over the whole prefix (O(L^2) for a
sequence; minutes for a few dozen 1,000-nt sequences on a CPU); with it, one position.
KVCacheDecoder re-states PlainTransformer's block arithmetic over the model's own modules
(helm_scale.plain_model._Block): tests check it against ``model(ids)[:, -1]`` at every step,
so a change to the model that it does not follow fails there. RecurrentDecoder drives a
model's own ``decode(ids, state)`` (helm_scale.mamba.MambaLM). Any other model (Hyena,
whose long convolution has no constant-size state) gets the full forward: exact, but
each token re-runs the whole prefix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from helm_scale.lstm import LstmLM
from helm_scale.plain_model import PlainTransformer, rotary_tables, rotate


class FullForwardDecoder:
    """Any model with forward(input_ids) -> logits: re-runs the prefix each step."""

    def __init__(self, model):
        self.model = model

    def start(self, ids: torch.Tensor) -> torch.Tensor:
        self.ids = ids
        return self.model(ids)[:, -1]

    def step(self, next_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids[keep], next_ids[:, None]], dim=1)
        return self.model(self.ids)[:, -1]


class KVCacheDecoder:
    def __init__(self, model: PlainTransformer):
        self.model, self.cfg = model, model.config

    def _logits(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        m, cfg = self.model, self.cfg
        b, s = ids.shape
        if start + s > cfg.max_seq_len:
            raise ValueError(f"sequence length {start + s} exceeds max_seq_len {cfg.max_seq_len}")
        positions = torch.arange(start, start + s, device=ids.device).expand(b, s)
        x = m.word_embeddings(ids)
        if cfg.position == "learned":
            x = x + F.embedding(positions, m.position_embeddings)
        rotary = rotary_tables(positions, cfg, x.dtype) if cfg.position == "rotary" else None
        heads, d = cfg.num_heads, cfg.head_dim
        for i, layer in enumerate(m.layers):
            q, k, v = layer.qkv(layer.norm1(x)).view(b, s, heads, 3, d).permute(3, 0, 2, 1, 4).unbind(0)
            if rotary is not None:
                q, k = rotate(q, *rotary), rotate(k, *rotary)
            if start:
                k = torch.cat([self.keys[i], k], dim=2)
                v = torch.cat([self.values[i], v], dim=2)
                self.keys[i], self.values[i] = k, v
            else:
                self.keys.append(k)
                self.values.append(v)
            # The prompt attends causally; a single new token sees every cached key.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0 and s > 1)
            x = x + layer.proj(y.transpose(1, 2).reshape(b, s, heads * d))
            x = x + layer.fc2(F.gelu(layer.fc1(layer.norm2(x)), approximate="tanh"))
        weight = m.word_embeddings.weight if cfg.tie_embeddings else m.head.weight
        return F.linear(m.final_norm(x[:, -1]), weight)

    def start(self, ids: torch.Tensor) -> torch.Tensor:
        self.keys, self.values, self.length = [], [], ids.shape[1]
        return self._logits(ids, 0)

    def step(self, next_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        self.keys = [k[keep] for k in self.keys]
        self.values = [v[keep] for v in self.values]
        logits = self._logits(next_ids[:, None], self.length)
        self.length += 1
        return logits


class LstmDecoder:
    def __init__(self, model: LstmLM):
        self.model = model

    def _logits(self, ids: torch.Tensor, state) -> torch.Tensor:
        m = self.model
        out, self.state = m.lstm(m.word_embeddings(ids), state)
        weight = m.word_embeddings.weight if m.config.tie_embeddings else m.head.weight
        return F.linear(out[:, -1], weight)

    def start(self, ids: torch.Tensor) -> torch.Tensor:
        return self._logits(ids, None)

    def step(self, next_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h, c = self.state
        return self._logits(next_ids[:, None], (h[:, keep].contiguous(), c[:, keep].contiguous()))


class RecurrentDecoder:
    """A model that decodes itself: ``decode(ids, state=None) -> (logits, state)`` with
    ``state.rows(keep)`` selecting batch rows (MambaLM)."""

    def __init__(self, model):
        self.model = model

    def start(self, ids: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.model.decode(ids)
        return logits

    def step(self, next_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.model.decode(next_ids[:, None], self.state.rows(keep))
        return logits


def decoder_for(model):
    """The fastest exact decoder for ``model`` (eval mode: no dropout to reproduce)."""
    if type(model) is PlainTransformer and model.config.attention == "causal":
        return KVCacheDecoder(model)
    if type(model) is LstmLM:
        return LstmDecoder(model)
    if hasattr(model, "decode") and model.config.attention == "causal":
        return RecurrentDecoder(model)
    return FullForwardDecoder(model)
