"""Next-token logits one token at a time, for sampling.

    dec = decoder_for(model)            IncrementalDecoder or FullForwardDecoder
    logits = dec.start(ids)             [b, s] prompt -> [b, padded_vocab] at its last position
    logits = dec.step(next_ids, keep)   rows ``keep`` of the batch each take one more token

A model that can carry a state from token to token (``model.can_decode()``: the
transformer's key / value cache, the LSTM's and Mamba's recurrent state) runs one position
per new token through its own ``decode(ids, state)``; tests check it against
``model(ids)[:, -1]`` at every step. Any other model (Hyena, whose long convolution has no
constant-size state; bidirectional models) gets the full forward: exact, but each token
re-runs the whole prefix (O(L^2) for a sequence; minutes for a few dozen 1,000-nt
sequences on a CPU).
"""
from __future__ import annotations

import torch


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


class IncrementalDecoder:
    """A model that decodes itself: ``decode(ids, state=None) -> (logits, state)`` with
    ``state.rows(keep)`` selecting batch rows (helm_scale.models.base.LanguageModel)."""

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
    return IncrementalDecoder(model) if model.can_decode() else FullForwardDecoder(model)
