"""What the attention-free language models (models.mamba, models.hyena) share:
token embedding (plus a learned absolute position table when ``position: learned``, as
HELM's Mamba has), dropout, a stack of blocks in ``self.layers``, a final LayerNorm, and the
head of helm_scale.models.base.LanguageModel (tied or separate).

  MixerLM(config, arch)          subclasses append their blocks to self.layers
      .hidden_states(input_ids, position_ids=None, segment_ids=None, padding_mask=None)
      subclasses define sequence_flops(seq_len) (LanguageModel.flops_per_token adds the matmuls)

Each block is called as ``block(x, keep)``: ``keep`` [b, s] bool marks the real tokens of
right-padded rows for bidirectional models (None for causal ones, whose right padding
never reaches a real token). Packed rows are refused: a recurrence or a long convolution
would carry one sequence into the next. Plain PyTorch on one device; the trainer runs these
models at tensor_parallel = 1 under DDP or DeepSpeed, and their state dict is the full one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from helm_scale.models.base import LanguageModel
from helm_scale.models.config import ModelConfig
from helm_scale.models.layers import DTYPES


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 at least, for the recurrence and the FFT (fp64 stays fp64: the tests' references)."""
    return x if x.dtype == torch.float64 else x.float()


def residual_scale_(linear: nn.Linear, num_layers: int) -> None:
    """GPT-2's init for projections that write into the residual stream: divided by
    sqrt(2 L), so that the stream's variance does not grow with depth (2 writers per block)."""
    with torch.no_grad():
        linear.weight.div_(math.sqrt(2 * num_layers))


class MixerLM(LanguageModel):
    def __init__(self, config: ModelConfig, arch: str):
        super().__init__()
        if config.arch != arch:
            raise ValueError(f"{type(self).__name__} needs model.arch = {arch!r}, got {config.arch!r}")
        h, dtype = config.hidden_size, DTYPES[config.params_dtype]
        self.config, self.sequence_parallel = config, False
        self.causal = config.attention == "causal"
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, h, dtype=dtype)
        if config.position == "learned":
            self.position_embeddings = nn.Parameter(torch.empty(config.max_seq_len, h, dtype=dtype))
        self.layers = nn.ModuleList()
        self.final_norm = nn.LayerNorm(h, eps=config.layernorm_eps, dtype=dtype)
        if not config.tie_embeddings:
            self.head = nn.Linear(h, config.padded_vocab_size, bias=False, dtype=dtype)
        with torch.no_grad():  # the transformer's init for the tables and the head
            for table in self.embedding_tables():
                nn.init.normal_(table, std=config.init_std)

    def embedding_tables(self) -> list[torch.Tensor]:
        tables = [self.word_embeddings.weight]
        if self.config.position == "learned":
            tables.append(self.position_embeddings)
        if not self.config.tie_embeddings:
            tables.append(self.head.weight)
        return tables

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
              start: int = 0) -> torch.Tensor:
        b, s = input_ids.shape
        if start + s > self.config.max_seq_len:
            raise ValueError(f"sequence length {start + s} exceeds max_seq_len {self.config.max_seq_len}")
        x = self.word_embeddings(input_ids)
        if self.config.position == "learned":
            if position_ids is None:
                position_ids = torch.arange(start, start + s, device=input_ids.device).expand(b, s)
            x = x + F.embedding(position_ids, self.position_embeddings)
        return F.dropout(x, self.config.dropout, self.training)

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None,
                      padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        name = type(self).__name__
        if segment_ids is not None and bool((segment_ids.amax(dim=1) > 1).any()):
            raise ValueError(f"{name} cannot take packed rows (its state would flow from one "
                             "sequence into the next): set data.pack = false")
        keep = None
        if not self.causal and padding_mask is not None:
            keep = ~padding_mask.bool()
            lengths = keep.sum(dim=1, keepdim=True)
            if not torch.equal(keep, torch.arange(keep.shape[1], device=keep.device) < lengths):
                raise ValueError(f"{name} needs right-padded rows: padding_mask must be False "
                                 "on a prefix of each row and True after it")
        x = self.embed(input_ids, position_ids)
        for layer in self.layers:
            x = layer(x, keep)
        return self.final_norm(x)
