"""Sampling codon sequences from a causal (CLM) export.

    generate(exported, n, temperature=1.0, top_k=10, top_p=0.95, prefix="ATG",
             max_codons=None, seed=0, batch_size=16, progress=True) -> list[str]
    generate_records(...same...) -> list[Generated]   (sequence, codons, ended with <eos>)
    filter_logits(logits [b, V], allowed [V] bool, temperature, top_k, top_p) -> logits
    allowed_tokens(vocab, padded_vocab_size) -> bool [padded_vocab_size]

Only the 64 codons and <eos> can be sampled: specials and the padded vocabulary entries
get -inf before anything else. Then (the paper's order, as in Hugging Face): divide by
the temperature, keep the top_k logits (ties with the k-th are kept), keep the smallest
set of most probable tokens whose mass reaches top_p (the most probable one always
stays), renormalise and draw. Each sequence starts ``<cls> prefix-codons`` and ends at
its <eos> or after ``max_codons`` codons (prefix included), default the training
``data.seq_len - 2`` and never more than the model's positions allow. Seeded: one
torch.Generator drives every draw, so (seed, n, batch_size) fix the output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from helm_scale.evaluate.generation.decoding import decoder_for
from helm_scale.evaluate.lm.scoring import is_causal
from helm_scale.evaluate.sequences import EvalInputError
from helm_scale.tokenizer import SequenceError


@dataclass(frozen=True)
class Generated:
    sequence: str   # nucleotides: prefix + sampled codons, no <eos>
    codons: int
    ended: bool     # the model emitted <eos> (False: stopped at max_codons)


def allowed_tokens(vocab, padded_vocab_size: int) -> torch.Tensor:
    allowed = torch.zeros(padded_vocab_size, dtype=torch.bool)
    allowed[list(vocab.codon_lookup)] = True
    allowed[vocab.eos_id] = True
    return allowed


def filter_logits(logits: torch.Tensor, allowed: torch.Tensor, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits with every token that may not be drawn set to -inf (a new tensor)."""
    if not temperature > 0:
        raise EvalInputError(f"temperature must be > 0, got {temperature}")
    z = logits.float() / temperature
    z = z.masked_fill(~allowed.to(z.device), float("-inf"))
    if top_k is not None and top_k > 0:
        k = min(top_k, int(allowed.sum()))
        kth = torch.topk(z, k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        if not top_p > 0:
            raise EvalInputError(f"top_p must be in (0, 1], got {top_p}")
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more probable tokens
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def _check(exported, temperature, top_k, top_p, prefix: str, max_codons) -> tuple[list[int], int]:
    """(the prefix's codon ids, the codon limit), or an error naming the bad argument."""
    if not is_causal(exported):
        raise EvalInputError("generation needs a causal (CLM) model; this export is bidirectional (MLM)")
    if not temperature > 0:
        raise EvalInputError(f"--temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise EvalInputError(f"--top-k must be >= 0 (0: off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise EvalInputError(f"--top-p must be in (0, 1], got {top_p}")
    read = exported.vocab.encode_batch([prefix])
    if read.bases[0] % 3 or read.invalid[0] or read.ambiguous[0]:
        raise SequenceError(f"--prefix must be whole codons of A/C/G/T, got {prefix!r}")
    cfg = exported.config
    limit = cfg.model.max_seq_len - 1  # <cls> + codons fill the positions; the last predicts <eos>
    wanted = max_codons if max_codons is not None else min(cfg.data.seq_len - 2, limit)
    if not 1 <= wanted <= limit:
        raise EvalInputError(f"--max-codons must be in [1, {limit}] for this model "
                             f"(max_seq_len {cfg.model.max_seq_len}), got {wanted}")
    if len(read.tokens) >= wanted:
        raise EvalInputError(f"the prefix has {len(read.tokens)} codons, not fewer than --max-codons {wanted}")
    return read.tokens.tolist(), wanted


@torch.no_grad()
def generate_records(exported, n: int, temperature: float = 1.0, top_k: int | None = 10,
                     top_p: float | None = 0.95, prefix: str = "ATG", max_codons: int | None = None,
                     seed: int = 0, batch_size: int = 16, progress: bool = True) -> list[Generated]:
    if n < 1 or batch_size < 1:
        raise EvalInputError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    prefix_codons, max_codons = _check(exported, temperature, top_k, top_p, prefix, max_codons)
    vocab, model = exported.vocab, exported.model
    prefix = vocab.decode(prefix_codons)
    device = next(model.parameters()).device
    allowed = allowed_tokens(vocab, exported.config.model.padded_vocab_size).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    start = [vocab.cls_id] + prefix_codons
    out: list[Generated] = []
    bar = tqdm(total=n, desc="generating", unit="seq", disable=not progress)
    for first in range(0, n, batch_size):
        rows = min(batch_size, n - first)
        decoder = decoder_for(model)
        logits = decoder.start(torch.tensor([start] * rows, dtype=torch.long, device=device))
        active = list(range(rows))  # rows still without <eos>, in the decoder's row order
        sampled: list[list[int]] = [[] for _ in range(rows)]
        ended = [False] * rows
        length = len(prefix_codons)
        while True:
            probs = torch.softmax(filter_logits(logits, allowed, temperature, top_k, top_p), dim=-1)
            draw = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            keep = draw != vocab.eos_id
            for row, token, going in zip(active, draw.tolist(), keep.tolist()):
                if going:
                    sampled[row].append(token)
                else:
                    ended[row] = True
            active = [row for row, going in zip(active, keep.tolist()) if going]
            length += 1
            if not active or length >= max_codons:
                break
            logits = decoder.step(draw[keep], keep.nonzero().flatten())
        for r in range(rows):
            seq = prefix + vocab.decode(sampled[r])
            out.append(Generated(seq, len(seq) // 3, ended[r]))
        bar.update(rows)
    bar.close()
    return out


def generate(exported, n: int, temperature: float = 1.0, top_k: int | None = 10,
             top_p: float | None = 0.95, prefix: str = "ATG", max_codons: int | None = None,
             seed: int = 0, batch_size: int = 16, progress: bool = True) -> list[str]:
    """``n`` sampled nucleotide sequences (prefix included, <eos> not)."""
    return [g.sequence for g in generate_records(exported, n, temperature, top_k, top_p, prefix,
                                                 max_codons, seed, batch_size, progress)]
