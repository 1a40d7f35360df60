"""The second seed's mutation-detection task: tell a real sequence from an edited copy.

    mutate(seq, kind, k, rng) -> str             exactly k edits of one kind
    mutation_detection(score_fn, sequences, edits=(1, 5, 10), kinds=KINDS, seed=0,
                       progress=True) -> dict
    ngram_score_fn(lm) / model_score_fn(exported, batch_size=16) -> score_fn

``score_fn(list[str]) -> per-nucleotide NLL per sequence`` (lower = more probable, i.e.
log of the per-nucleotide perplexity). For every sequence, kind and edit count one copy
is made; the model is right when the real sequence scores strictly lower, a tie counts
one half. Accuracy is reported per kind and edit count, per edit count over kinds, and
overall. Edits, at the nucleotide level:

  insert      k bases drawn uniformly, each at a uniform position (length + k)
  delete      k distinct positions removed (length - k)
  substitute  k distinct positions, each changed to one of the 3 other bases (Hamming k)
  swap        k non-overlapping adjacent pairs of unequal bases exchanged (Hamming 2k,
              composition unchanged)

Codon models score the mutated copy re-tokenised in frame from its first base (a
frame-shifted copy keeps being read in the original frame; trailing bases are dropped),
exactly as scoring.encode does for every sequence. The copy of sequence i for (kind, k) is
drawn from ``random.Random(f"{seed}:{i}:{kind}:{k}")``: adding sequences, kinds or edit
counts never changes another copy.
"""
from __future__ import annotations

import random

import numpy as np
from tqdm.auto import tqdm

from helm_scale.evaluate.sequences import EvalInputError
from helm_scale.tokenizer import read_bases

KINDS = ("insert", "delete", "substitute", "swap")
_BASES = "ACGT"


def _swap_positions(seq: str, k: int, rng: random.Random) -> list[int]:
    candidates = [i for i in range(len(seq) - 1) if seq[i] != seq[i + 1]]
    rng.shuffle(candidates)
    taken: set[int] = set()
    chosen = []
    for i in candidates:
        if i in taken or i + 1 in taken:
            continue
        chosen.append(i)
        taken.update((i, i + 1))
        if len(chosen) == k:
            return chosen
    raise EvalInputError(f"a sequence of {len(seq)} nt has fewer than {k} non-overlapping "
                         "adjacent pairs of unequal bases to swap")


def mutate(seq: str, kind: str, k: int, rng: random.Random) -> str:
    if kind not in KINDS:
        raise EvalInputError(f"unknown edit kind {kind!r}; choose from {KINDS}")
    if k < 1:
        raise EvalInputError(f"edit count must be >= 1, got {k}")
    if kind == "insert":
        out = list(seq)
        # Positions in the growing copy: the j-th insertion lands anywhere in len + j slots.
        for j in range(k):
            out.insert(rng.randrange(len(seq) + j + 1), rng.choice(_BASES))
        return "".join(out)
    if kind in ("delete", "substitute") and k > len(seq) - (kind == "delete"):
        raise EvalInputError(f"cannot {kind} {k} bases of a sequence of {len(seq)} nt")
    if kind == "delete":
        drop = set(rng.sample(range(len(seq)), k))
        return "".join(c for i, c in enumerate(seq) if i not in drop)
    out = list(seq)
    if kind == "substitute":
        for i in rng.sample(range(len(seq)), k):
            out[i] = rng.choice([b for b in _BASES if b != seq[i]])
        return "".join(out)
    for i in _swap_positions(seq, k, rng):
        out[i], out[i + 1] = out[i + 1], out[i]
    return "".join(out)


def mutation_detection(score_fn, sequences: list[str], edits=(1, 5, 10), kinds=KINDS,
                       seed: int = 0, progress: bool = True) -> dict:
    """Accuracy of preferring each real sequence over its edited copies (see module doc)."""
    if not sequences:
        raise EvalInputError("no sequences for the mutation task")
    read_bases(sequences).check_acgt("mutation detection")
    edits, kinds = tuple(int(e) for e in edits), tuple(kinds)
    tasks = [(i, kind, k) for i in range(len(sequences)) for kind in kinds for k in edits]
    mutants = [mutate(sequences[i], kind, k, random.Random(f"{seed}:{i}:{kind}:{k}"))
               for i, kind, k in tqdm(tasks, desc="mutating", unit="copy", disable=not progress, leave=False)]
    real = np.asarray(score_fn(list(sequences)), dtype=float)
    fake = np.asarray(score_fn(mutants), dtype=float)
    if real.shape != (len(sequences),) or fake.shape != (len(mutants),):
        raise ValueError("score_fn must return one score per sequence")
    index = np.array([i for i, _, _ in tasks], dtype=np.int64)
    right = np.where(real[index] < fake, 1.0, np.where(real[index] == fake, 0.5, 0.0))
    kind_of = np.array([kind for _, kind, _ in tasks])
    k_of = np.array([k for _, _, k in tasks])
    by_kind = {kind: {str(k): float(right[(kind_of == kind) & (k_of == k)].mean()) for k in edits}
               for kind in kinds}
    return {
        "accuracy": by_kind,
        "accuracy_by_edits": {str(k): float(right[k_of == k].mean()) for k in edits},
        "accuracy_overall": float(right.mean()),
        "ties": int((real[index] == fake).sum()),
        "n_sequences": len(sequences), "edits": list(edits), "kinds": list(kinds), "seed": seed,
        "mean_real_score": float(real.mean()),
        "definition": "accuracy = share of (sequence, copy) pairs where the real sequence has the lower "
                      "per-nucleotide NLL (ties count 1/2)",
    }


def ngram_score_fn(lm):
    """Per-nucleotide NLL under an NgramLM."""
    def score(seqs: list[str]) -> np.ndarray:
        nll, nt = lm.score(seqs)
        return nll / np.maximum(nt, 1)
    return score


def model_score_fn(exported, batch_size: int = 16, progress: bool = True):
    """Per-nucleotide NLL under a causal export (codons re-tokenised in frame)."""
    from helm_scale.evaluate.lm.scoring import sequence_nll

    def score(seqs: list[str]) -> np.ndarray:
        nll, nt = sequence_nll(exported, seqs, batch_size, progress)
        return nll / np.maximum(nt, 1)
    return score
