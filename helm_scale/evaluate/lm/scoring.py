"""An exported model applied to raw nucleotide sequences: likelihoods and embeddings.

    encode(vocab, sequences, max_len) -> (input_ids [n, L] padded with <pad>, lengths [n])
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

from helm_scale.evaluate.sequences import EvalInputError, tokenise


def encode(vocab, sequences: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = tokenise(sequences, vocab, max_len).ids
    width = max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.from_numpy(r)
    return out, torch.tensor([len(r) for r in rows], dtype=torch.long)


def is_causal(exported) -> bool:
    return exported.config.model.attention == "causal"


def _batches(sequences: list[str], batch_size: int, desc: str, progress: bool):
    """Index batches of similar length (less padding), in a progress bar."""
    order = np.argsort([len(s) for s in sequences], kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return tqdm(chunks, desc=desc, unit="batch", disable=not progress or len(chunks) < 2, leave=False)


def _model_inputs(exported, ids: torch.Tensor) -> dict:
    # Causal rows padded on the right need no mask; bidirectional ones must hide the padding.
    inputs = {"input_ids": ids}
    if not is_causal(exported):
        inputs["padding_mask"] = ids == exported.vocab.pad_id
    return inputs


def _device(exported) -> torch.device:
    return next(exported.model.parameters()).device


@torch.no_grad()
def sequence_nll(exported, sequences: list[str], batch_size: int = 16,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Total NLL (nats) of each sequence under a causal model, and the nucleotides scored."""
    if not is_causal(exported):
        raise EvalInputError("sequence likelihoods need a causal (CLM) model; this export is "
                             "bidirectional (MLM)")
    vocab, max_len = exported.vocab, exported.config.model.max_seq_len
    nll, nt = np.zeros(len(sequences)), np.zeros(len(sequences), dtype=np.int64)
    device = _device(exported)
    for idx in _batches(sequences, batch_size, "scoring", progress):
        ids, lengths = encode(vocab, [sequences[i] for i in idx], max_len)
        ids = ids.to(device)
        logits = exported.model(**_model_inputs(exported, ids)).float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = ids[:, 1:]
        token_logp = logp.gather(-1, targets[..., None]).squeeze(-1)
        valid = torch.arange(targets.shape[1], device=device)[None] < (lengths.to(device)[:, None] - 1)
        nll[idx] = (-(token_logp * valid).sum(dim=1)).double().cpu().numpy()
        codons = (valid & (targets != vocab.eos_id)).sum(dim=1)
        nt[idx] = 3 * codons.cpu().numpy()
    return nll, nt


@torch.no_grad()
def embed(exported, sequences: list[str], batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Mean over each sequence's tokens (<cls>, codons, <eos>) of the model's last hidden states."""
    vocab, max_len = exported.vocab, exported.config.model.max_seq_len
    device = _device(exported)
    out = None
    for idx in _batches(sequences, batch_size, "embedding", progress):
        ids, lengths = encode(vocab, [sequences[i] for i in idx], max_len)
        ids = ids.to(device)
        hidden = exported.model.hidden_states(**_model_inputs(exported, ids)).double()
        keep = (torch.arange(ids.shape[1], device=device)[None] < lengths.to(device)[:, None]).double()
        pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        if out is None:
            out = np.zeros((len(sequences), pooled.shape[1]))
        out[idx] = pooled.cpu().numpy()
    return out if out is not None else np.zeros((0, exported.config.model.hidden_size))
