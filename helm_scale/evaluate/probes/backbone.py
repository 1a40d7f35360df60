"""A frozen exported model as a feature extractor: sequences in, hidden states out.

Sequences are tokenised the way the corpus was (helm_scale.evaluate.sequences.tokenise:
the project's tokenizer, ``<cls> codons <eos>``, cut to the model's length like the
training batches), run through the model once in length-sorted batches, and kept in
memory as one zero-padded tensor: every probe and every seed reuses them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from helm_scale.codon import Vocabulary
from helm_scale.data.batches import model_inputs, pad_rows
from helm_scale.evaluate.sequences import Tokenised, tokenise


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
                batch = pad_rows([ids[i] for i in rows], self.vocab.pad_id)
                # Padding masked for causal models too (it changes none of their real states).
                inputs = model_inputs({k: v.to(self.device) for k, v in batch.items()}, mask_padding=True)
                hidden = self.model.hidden_states(**inputs).float().cpu()
                hidden = hidden.masked_fill(batch["segment_ids"][..., None] == 0, 0.0)
                for r, i in enumerate(rows):
                    k = len(ids[i])
                    tokens[i, :k] = hidden[r, :k].half()
                    pooled[i] = hidden[r, :k].mean(0).numpy()
                start += len(rows)
                bar.update(len(rows))
        return Features(tokens, lengths, pooled)
