"""A frozen exported model as a feature extractor: sequences in, hidden states out.

Sequences are tokenised the way the corpus was (codons in frame from the first base,
RNA U -> T, trailing bases dropped, a codon with any non-ACGT base -> ``<unk>``,
``<cls> codons <eos>``, cut to the model's length like the training batches), run through
the model once in length-sorted batches, and kept in memory as one zero-padded tensor:
every probe and every seed reuses them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from helm_scale.codon import Vocabulary
from helm_scale.data.batches import with_specials

# Byte -> base index: A C G T = 0..3, U reads as T, anything else 4 (an ambiguous base).
_BASE_INDEX = np.full(256, 4, dtype=np.int64)
for _i, _b in enumerate("ACGT"):
    _BASE_INDEX[ord(_b)] = _BASE_INDEX[ord(_b.lower())] = _i
_BASE_INDEX[ord("U")] = _BASE_INDEX[ord("u")] = 3


def codon_ids(sequence: str, vocab: Vocabulary) -> np.ndarray:
    """Token ids of the in-frame codons (no specials); trailing bases are dropped."""
    raw = np.frombuffer("".join(sequence.split()).encode("ascii", "replace"), dtype=np.uint8)
    bases = _BASE_INDEX[raw]
    n = len(bases) // 3
    triples = bases[: 3 * n].reshape(n, 3)
    ambiguous = (triples > 3).any(axis=1)
    index = (16 * triples[:, 0] + 4 * triples[:, 1] + triples[:, 2]).clip(0, 63)
    ids = vocab.codon_lookup[index]
    ids[ambiguous] = vocab.unk_id
    return ids


@dataclass
class Tokenised:
    ids: list[np.ndarray]  # <cls> codons [<eos>] per sequence, at most max_len
    truncated: int         # sequences cut to the model's length
    unknown_codons: int    # codons with a non-ACGT base, now <unk>


def tokenise(sequences: list[str], vocab: Vocabulary, max_len: int) -> Tokenised:
    ids, truncated, unknown = [], 0, 0
    for seq in sequences:
        codons = codon_ids(seq, vocab)
        unknown += int((codons == vocab.unk_id).sum())
        truncated += len(codons) + 2 > max_len
        ids.append(with_specials(codons, max_len, vocab))
    return Tokenised(ids, truncated, unknown)


@dataclass
class Features:
    """Hidden states of N sequences: ``tokens`` [N, L, H] float16 (zero past each length;
    half precision because the per-token states are the memory of the whole evaluation),
    ``lengths`` [N] tokens incl. specials, ``pooled`` [N, H] float32 mean over the tokens."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    pooled: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)


class Backbone:
    """An exported model (helm_scale.evaluate.cli.load_export), frozen, with its vocabulary
    and maximum length; it runs on the export's device, its features stay on the CPU."""

    def __init__(self, exported, batch_tokens: int = 16384):
        self.model = exported.model.eval()
        self.device = next(self.model.parameters()).device
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.vocab: Vocabulary = exported.vocab
        self.config = exported.config
        self.step = exported.step
        self.max_len = int(exported.config.model.max_seq_len)
        self.hidden_size = int(exported.config.model.hidden_size)
        self.batch_tokens = batch_tokens

    def describe(self) -> dict:
        from helm_scale.models.registry import num_parameters
        m = self.config.model
        return {"step": self.step, "loss": getattr(self.config.loss, "name", None),
                "objective": self.config.data.objective, "layers": m.num_layers,
                "hidden": m.hidden_size, "max_seq_len": m.max_seq_len,
                "parameters": num_parameters(m)}

    def tokenise(self, sequences: list[str], max_len: int | None = None) -> Tokenised:
        return tokenise(sequences, self.vocab, min(max_len or self.max_len, self.max_len))

    @torch.inference_mode()
    def features(self, ids: list[np.ndarray], desc: str | None = "embedding") -> Features:
        """Last hidden states (after the final norm) of every sequence, computed once;
        a progress bar named ``desc`` (None: none)."""
        n, lengths = len(ids), torch.tensor([len(t) for t in ids], dtype=torch.long)
        width = int(lengths.max())
        tokens = torch.zeros(n, width, self.hidden_size, dtype=torch.float16)
        pooled = np.zeros((n, self.hidden_size), dtype=np.float32)
        order = torch.argsort(lengths, descending=True).tolist()  # little padding per batch
        with tqdm(total=n, desc=desc, unit="seq", leave=False, disable=desc is None) as bar:
            start = 0
            while start < n:
                longest = int(lengths[order[start]])
                rows = order[start:start + max(1, self.batch_tokens // longest)]
                batch = torch.full((len(rows), longest), self.vocab.pad_id, dtype=torch.long)
                for r, i in enumerate(rows):
                    batch[r, : len(ids[i])] = torch.from_numpy(ids[i])
                padding = batch == self.vocab.pad_id
                hidden = self.model.hidden_states(batch.to(self.device),
                                                  padding_mask=padding.to(self.device)).float().cpu()
                hidden = hidden.masked_fill(padding[..., None], 0.0)
                for r, i in enumerate(rows):
                    k = len(ids[i])
                    tokens[i, :k] = hidden[r, :k].half()
                    pooled[i] = hidden[r, :k].mean(0).numpy()
                start += len(rows)
                bar.update(len(rows))
        return Features(tokens, lengths, pooled)
