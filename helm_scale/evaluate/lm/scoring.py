"""An exported model applied to raw nucleotide sequences: likelihoods and embeddings.

    encode(vocab, sequences, max_len) -> batch: input_ids [n, L] padded with <pad>, segment_ids (0: padding)
    sequence_nll(exported, sequences, batch_size=16) -> (nll [n], nucleotides [n])   CLM only
    embed(exported, sequences, batch_size=16) -> np.ndarray [n, hidden]   mean-pooled hidden states

Tokenisation is prep's and the loader's (helm_scale.evaluate.sequences.tokenise): codons
read in frame from the first base (trailing bases dropped, a codon with a non-ACGT base
becomes <unk>), ``<cls> codons <eos>``, and a sequence longer than ``max_len`` tokens is
cut to ``<cls>`` + its first max_len - 1 codons with no ``<eos>``. ``sequence_nll`` sums -log p of every codon and of the final <eos> (when
it fits) under the model's softmax over the whole padded vocabulary, the training loss's
normaliser; ``nucleotides`` counts the scored codons x 3, so
``exp(nll.sum() / nucleotides.sum())`` is the per-nucleotide perplexity.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from helm_scale.data.batches import model_inputs, pad_rows
from helm_scale.evaluate.sequences import EvalInputError, tokenise


def encode(vocab, sequences: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """The sequences as an unpacked batch of the loader's format (helm_scale.data.batches)."""
    return pad_rows(tokenise(sequences, vocab, max_len).ids, vocab.pad_id)


def is_causal(exported) -> bool:
    return exported.config.model.attention == "causal"


def _batches(sequences: list[str], batch_size: int, desc: str, progress: bool):
    """Index batches of similar length (less padding), in a progress bar."""
    order = np.argsort([len(s) for s in sequences], kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return tqdm(chunks, desc=desc, unit="batch", disable=not progress or len(chunks) < 2, leave=False)


def _encoded(exported, sequences: list[str]) -> tuple[dict, dict]:
    """(the batch on the export's device, the model's keyword arguments for it)."""
    device = next(exported.model.parameters()).device
    batch = {k: v.to(device) for k, v in encode(exported.vocab, sequences, exported.config.model.max_seq_len).items()}
    return batch, model_inputs(batch, mask_padding=not is_causal(exported))


@torch.no_grad()
def sequence_nll(exported, sequences: list[str], batch_size: int = 16,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Total NLL (nats) of each sequence under a causal model, and the nucleotides scored."""
    if not is_causal(exported):
        raise EvalInputError("sequence likelihoods need a causal (CLM) model; this export is "
                             "bidirectional (MLM)")
    nll, nt = np.zeros(len(sequences)), np.zeros(len(sequences), dtype=np.int64)
    for idx in _batches(sequences, batch_size, "scoring", progress):
        batch, inputs = _encoded(exported, [sequences[i] for i in idx])
        logits = exported.model(**inputs).float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = batch["input_ids"][:, 1:]
        token_logp = logp.gather(-1, targets[..., None]).squeeze(-1)
        valid = batch["segment_ids"][:, 1:] > 0  # every token after <cls>: each is predicted
        nll[idx] = (-(token_logp * valid).sum(dim=1)).double().cpu().numpy()
        codons = (valid & (targets != exported.vocab.eos_id)).sum(dim=1)
        nt[idx] = 3 * codons.cpu().numpy()
    return nll, nt


@torch.no_grad()
def embed(exported, sequences: list[str], batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Mean over each sequence's tokens (<cls>, codons, <eos>) of the model's last hidden states."""
    out = None
    for idx in _batches(sequences, batch_size, "embedding", progress):
        batch, inputs = _encoded(exported, [sequences[i] for i in idx])
        hidden = exported.model.hidden_states(**inputs).double()
        keep = (batch["segment_ids"] > 0).double()
        pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        if out is None:
            out = np.zeros((len(sequences), pooled.shape[1]))
        out[idx] = pooled.cpu().numpy()
    return out if out is not None else np.zeros((0, exported.config.model.hidden_size))
