"""An LSTM language model over codons: the second seed's recurrent baseline, trained by our
trainer (``model.arch: lstm``, see configs/lstm_baseline.yaml) and exported like the
transformer.

  LstmLM(config)
      .forward(input_ids, position_ids=None, segment_ids=None, padding_mask=None)
          -> logits [b, s, padded_vocab_size]
      .hidden_states(same arguments) -> [b, s, hidden_size]   (the top LSTM layer's output)
      .decode(input_ids, state=None) -> (logits [b, V], LstmState)   one position per token

Embedding (width hidden_size) -> dropout -> ``num_layers`` stacked LSTM layers of
``hidden_size`` units (dropout between them) -> dropout -> head, tied to the embedding
when ``tie_embeddings``. Unidirectional, so causal LM only; position_ids are not needed
(the recurrence knows the order) and padding on the right never reaches a real token.
Packed rows (several sequences per row) would carry the state across sequences, so
segment_ids are refused. Plain PyTorch, no tensor parallelism: it runs with
tensor_parallel = 1 under DDP or DeepSpeed; the state dict is already the full one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from helm_scale.models.base import LanguageModel
from helm_scale.models.config import ModelConfig
from helm_scale.models.layers import DTYPES


@dataclass
class LstmState:
    """What decoding carries: every layer's (h, c) [layers, b, hidden]."""

    h: torch.Tensor
    c: torch.Tensor

    def rows(self, keep: torch.Tensor) -> LstmState:
        return LstmState(self.h[:, keep].contiguous(), self.c[:, keep].contiguous())


class LstmLM(LanguageModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch != "lstm":
            raise ValueError(f"LstmLM needs model.arch = 'lstm', got {config.arch!r}")
        h, dtype = config.hidden_size, DTYPES[config.params_dtype]
        self.config, self.sequence_parallel = config, False
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, h, dtype=dtype)
        self.lstm = nn.LSTM(h, h, num_layers=config.num_layers, batch_first=True,
                            dropout=config.dropout if config.num_layers > 1 else 0.0, dtype=dtype)
        if not config.tie_embeddings:
            self.head = nn.Linear(h, config.padded_vocab_size, bias=False, dtype=dtype)
        with torch.no_grad():  # the transformer's embedding init; LSTM weights keep PyTorch's
            nn.init.normal_(self.word_embeddings.weight, std=config.init_std)
            if not config.tie_embeddings:
                nn.init.normal_(self.head.weight, std=config.init_std)

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None,
                      padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if segment_ids is not None and bool((segment_ids.amax(dim=1) > 1).any()):
            raise ValueError("LstmLM cannot take packed rows (its state would flow from one "
                             "sequence into the next): set data.pack = false")
        p = self.config.dropout if self.training else 0.0
        x = F.dropout(self.word_embeddings(input_ids), p, self.training)
        out, _ = self.lstm(x)
        return F.dropout(out, p, self.training)

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, state: LstmState | None = None):
        out, (h, c) = self.lstm(self.word_embeddings(input_ids), None if state is None else (state.h, state.c))
        return self.logits(out[:, -1]), LstmState(h, c)

    def matmul_weights(self) -> int:
        h = self.config.hidden_size  # per layer: W_ih and W_hh, 4h x h each
        return super().matmul_weights() + self.config.num_layers * 8 * h * h

    def sequence_flops(self, seq_len: int) -> float:
        return 0.0  # the recurrence is the matmuls with W_hh, counted in matmul_weights
