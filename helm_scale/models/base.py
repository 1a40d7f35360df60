"""LanguageModel: what every network of helm_scale.models offers the trainer, the engines,
export and evaluation, and the parts they all share.

    model.config                    the ModelConfig it was built from
    model(input_ids, position_ids=None, segment_ids=None, padding_mask=None) -> logits
        [b, s, padded_vocab_size]; the tensor-parallel transformer returns this rank's
        vocab slice [b, s, padded_vocab_size / TP], the losses' input (never gathered)
    model.hidden_states(same arguments) -> [b, s, hidden_size], after the final norm
    model.decode(input_ids, state=None) -> (logits at the last position [b, V], state)
        incremental decoding where model.can_decode(); state.rows(keep) keeps batch rows
    model.layers                    its blocks (nn.ModuleList), where it has blocks: what
                                    compile and activation recompute wrap (helm_scale.parallel)
    model.sequence_parallel         activations sharded along the sequence (TP only)
    model.embedding_parameter_names()   lookup tables the optimizer may exempt from decay
    model.parameter_count(include_embeddings=True), model.flops_per_token(seq_len)
        (for a config without building weights: helm_scale.models.registry)

A subclass defines word_embeddings, head (when embeddings are untied), hidden_states()
and sequence_flops(); decode() where it can carry a state from token to token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helm_scale.models.config import ModelConfig


class LanguageModel(nn.Module):
    config: ModelConfig
    sequence_parallel = False

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(self.hidden_states(input_ids, position_ids, segment_ids, padding_mask))

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None,
                      padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states times the output embedding: the word embedding when tied, else the head."""
        weight = self.word_embeddings.weight if self.config.tie_embeddings else self.head.weight
        return F.linear(x, weight)

    def decode(self, input_ids: torch.Tensor, state=None):
        """Logits after the last of ``input_ids`` [b, s] and the state to continue from
        (state None: the ids are a prompt from position 0)."""
        raise NotImplementedError(f"{type(self).__name__} has no incremental decoding")

    def can_decode(self) -> bool:
        """Whether decode() works: a causal model whose class carries a state."""
        return self.config.attention == "causal" and type(self).decode is not LanguageModel.decode

    def embedding_parameter_names(self) -> set[str]:
        """Parameters that are lookup tables (the optimizer may exempt them from decay)."""
        return {"word_embeddings.weight", "position_embeddings"} & {name for name, _ in self.named_parameters()}

    def parameter_count(self, include_embeddings: bool = True) -> int:
        """All parameters, or without the lookup tables (a separate head counts as a matmul)."""
        params = dict(self.named_parameters())
        tables = 0 if include_embeddings else sum(params[n].numel() for n in self.embedding_parameter_names())
        return sum(p.numel() for p in params.values()) - tables

    def matmul_weights(self) -> int:
        """Weights a token meets in matmuls: every nn.Linear's and the tied head's (not the
        lookups, norms, convolution taps or vectors)."""
        n = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return n + (self.word_embeddings.weight.numel() if self.config.tie_embeddings else 0)

    def sequence_flops(self, seq_len: int) -> float:
        """Training FLOPs per token of the sequence mixing beyond matmul_weights (attention's
        scores, a scan, an FFT convolution), forward and backward."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) for MFU: 6 x matmul_weights() plus
        sequence_flops(seq_len)."""
        return 6.0 * self.matmul_weights() + self.sequence_flops(seq_len)
