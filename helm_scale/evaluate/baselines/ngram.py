"""n-gram language models of nucleotides or codons: the second seed's simplest baselines.

    lm = NgramLM(order=5, level="nucleotide", smoothing="kneser-ney").fit(train_sequences)
    lm.perplexity(test_sequences) -> float        per-nucleotide perplexity
    lm.score(sequences) -> (nll [n], nucleotides [n])  total NLL in nats per sequence
    lm.next_distribution(history) -> np.ndarray   P(next symbol | history), symbols + <eos>
    lm.save(path.npz); NgramLM.load(path.npz)

Symbols are the 4 nucleotides (``level="nucleotide"``) or the 64 codons read in frame
from the first base, trailing bases dropped (``level="codon"``), as the project's tokenizer
reads them (helm_scale.tokenizer; only A/C/G/T are taken); every sequence is
left-padded with order-1 <bos> and ends with an <eos> that is predicted too, so a
sequence's probability includes where it ends. Per-nucleotide perplexity is
``exp(total NLL / total nucleotides)``; for codons a codon is 3 nucleotides, so codon and
nucleotide models (and the transformer, see scoring.py) are compared on one scale.

Smoothing:
  "kneser-ney"  interpolated Kneser-Ney (Chen & Goodman 1998, with one absolute discount
                per order): the highest order uses counts, every lower order continuation
                counts N1+(. g w), and the unigram level interpolates with the uniform
                distribution over symbols + <eos>, so no symbol ever has probability 0.
                Discounts D_m = n1 / (n1 + 2 n2) per order (at least 0.05; Chen & Goodman's
                estimate, at most 1) or fixed.
                A context never seen backs off wholly to the next lower order.
  "add-k"       highest order only: (c(h w) + k) / (c(h) + k (V + 1)); k = 1 is Laplace.

n-grams are stored as sorted int64 keys (base V + 2, first symbol most significant) with
their counts, so fitting is a few ``np.unique`` calls per order and scoring is
``searchsorted``: millions of symbols take seconds.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from helm_scale.evaluate.sequences import EvalInputError
from helm_scale.tokenizer import read_bases

LEVELS = ("nucleotide", "codon")
SMOOTHING = ("kneser-ney", "add-k")


class NgramLM:
    def __init__(self, order: int = 5, level: str = "nucleotide", smoothing: str = "kneser-ney",
                 k: float = 1.0, discount: float | None = None):
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        if smoothing not in SMOOTHING:
            raise ValueError(f"smoothing must be one of {SMOOTHING}, got {smoothing!r}")
        self.level, self.smoothing, self.order = level, smoothing, order
        self.num_symbols = 4 if level == "nucleotide" else 64   # V; <eos> = V, <bos> = V + 1
        self.eos, self.bos, self.base = self.num_symbols, self.num_symbols + 1, self.num_symbols + 2
        max_order = math.floor(63 * math.log(2) / math.log(self.base))
        if not isinstance(order, int) or not 1 <= order <= max_order:
            raise ValueError(f"order must be an int in [1, {max_order}] for {level}s, got {order!r}")
        if not k > 0:
            raise ValueError(f"add-k needs k > 0, got {k}")
        if discount is not None and not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.k, self.fixed_discount = float(k), discount
        self.tables: list[dict[str, np.ndarray]] = []   # per order m = 1..n
        self.discounts: list[float] = []
        self.trained_symbols = 0

    # -- symbols -----------------------------------------------------------------------
    def symbols(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Symbol ids of every sequence (nucleotides, or in-frame codons), concatenated,
        and where each sequence's symbols start [n + 1]."""
        bases = read_bases(sequences)
        bases.check_acgt("n-gram models")
        if self.level == "nucleotide":
            return bases.array.astype(np.int64), bases.offsets
        return bases.codon_index()

    def _targets(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All sequences padded and concatenated, the index of every predicted symbol in it
        (each sequence's symbols and its <eos>), the sequence each target belongs to, and
        the nucleotides each sequence's score covers (codons: whole codons only)."""
        symbols, offsets = self.symbols(sequences)
        lengths = np.diff(offsets) + 1
        first = np.cumsum(lengths + self.order - 1) - lengths  # first target of each sequence
        seq_of = np.repeat(np.arange(len(lengths)), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        targets = np.repeat(first, lengths) + within
        arr = np.full(int((lengths + self.order - 1).sum()), self.bos, dtype=np.int64)
        arr[targets] = np.insert(symbols, offsets[1:], self.eos)
        per_symbol = 1 if self.level == "nucleotide" else 3
        return arr, targets, seq_of, per_symbol * (lengths - 1)

    def _keys(self, arr: np.ndarray, targets: np.ndarray) -> Iterator[np.ndarray]:
        """m-gram keys ending at every target, for m = 1..n (one array alive at a time)."""
        key = arr[targets]
        yield key
        for m in range(2, self.order + 1):
            key = arr[targets - (m - 1)] * self.base ** (m - 1) + key
            yield key

    # -- fitting -----------------------------------------------------------------------
    def fit(self, sequences: Iterable[str]) -> NgramLM:
        sequences = list(sequences)
        if not sequences:
            raise EvalInputError("cannot fit an n-gram model on no sequences")
        arr, targets, _, _ = self._targets(sequences)
        self.trained_symbols = len(targets)
        # Distinct m-grams of every order m >= 2; the top order with its counts.
        distinct = [np.unique(k, return_counts=m == self.order) if m > 1 or m == self.order else None
                    for m, k in enumerate(self._keys(arr, targets), start=1)]
        del arr, targets
        self.tables, self.discounts = [], []
        for m in range(1, self.order + 1):
            if m == self.order:
                grams, counts = distinct[m - 1]
            else:  # continuation counts: distinct symbols seen before each m-gram
                above = distinct[m][0] if m + 1 == self.order else distinct[m]
                grams, counts = np.unique(above % self.base ** m, return_counts=True)
            contexts, inverse = np.unique(grams // self.base, return_inverse=True)
            self.tables.append({
                "grams": grams, "counts": counts.astype(np.float64), "contexts": contexts,
                "totals": np.bincount(inverse, weights=counts, minlength=len(contexts)),
                "types": np.bincount(inverse, minlength=len(contexts)).astype(np.float64)})
            self.discounts.append(self._discount(counts))
        return self

    def _discount(self, counts: np.ndarray) -> float:
        if self.fixed_discount is not None:
            return self.fixed_discount
        n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
        d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.75
        return float(min(max(d, 0.05), 1.0))

    # -- scoring -----------------------------------------------------------------------
    @staticmethod
    def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
        if len(sorted_keys) == 0:
            return np.zeros(len(queries))
        idx = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
        return np.where(sorted_keys[idx] == queries, values[idx], 0.0)

    def _probabilities(self, keys: Iterator[np.ndarray], size: int) -> np.ndarray:
        """P(target | context) from the m-gram keys of every target, m = 1..n in order."""
        if not self.tables:
            raise RuntimeError("the n-gram model is not fitted: call fit() or load()")
        if self.smoothing == "add-k":
            *_, gram = keys
            t = self.tables[-1]
            count = self._lookup(t["grams"], t["counts"], gram)
            total = self._lookup(t["contexts"], t["totals"], gram // self.base)
            return (count + self.k) / (total + self.k * (self.num_symbols + 1))
        p = np.full(size, 1.0 / (self.num_symbols + 1))
        for gram, t, d in zip(keys, self.tables, self.discounts):
            context = gram // self.base
            total = self._lookup(t["contexts"], t["totals"], context)
            types = self._lookup(t["contexts"], t["types"], context)
            count = self._lookup(t["grams"], t["counts"], gram)
            seen = total > 0
            safe = np.where(seen, total, 1.0)
            p = np.where(seen, np.maximum(count - d, 0.0) / safe + d * types / safe * p, p)
        return p

    def score(self, sequences: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per sequence: total NLL in nats (every symbol and the final <eos>) and nucleotides."""
        sequences = list(sequences)
        arr, targets, seq_of, nucleotides = self._targets(sequences)
        p = self._probabilities(self._keys(arr, targets), len(targets))
        nll = np.bincount(seq_of, weights=-np.log(p), minlength=len(sequences))
        return nll, nucleotides

    def perplexity(self, sequences: Iterable[str]) -> float:
        """Per-nucleotide perplexity: exp(total NLL / total nucleotides)."""
        nll, nt = self.score(sequences)
        if nt.sum() == 0:
            raise EvalInputError("no nucleotides to score")
        return float(math.exp(nll.sum() / nt.sum()))

    def next_distribution(self, history: str) -> np.ndarray:
        """P(next symbol | history) over the V symbols then <eos>; sums to 1."""
        sym = self.symbols([history])[0]
        ctx = np.concatenate([np.full(self.order - 1, self.bos), sym])[-(self.order - 1):] \
            if self.order > 1 else np.zeros(0, np.int64)
        candidates = np.arange(self.num_symbols + 1)
        arr = np.concatenate([np.repeat(ctx[None], len(candidates), 0), candidates[:, None]], 1)
        targets = (np.arange(len(candidates)) + 1) * self.order - 1
        return self._probabilities(self._keys(arr.reshape(-1), targets), len(candidates))

    # -- persistence -------------------------------------------------------------------
    def config(self) -> dict:
        return {"order": self.order, "level": self.level, "smoothing": self.smoothing,
                "k": self.k, "discount": self.fixed_discount}

    def save(self, path: str | Path) -> None:
        arrays = {f"o{m}_{name}": v for m, t in enumerate(self.tables, 1) for name, v in t.items()}
        meta = {**self.config(), "discounts": self.discounts, "trained_symbols": self.trained_symbols,
                "format": "helm-scale-ngram/1"}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        try:
            data = np.load(path, allow_pickle=False)
            meta = json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError) as e:
            raise EvalInputError(f"{path}: not a saved n-gram model ({e})") from None
        if meta.get("format") != "helm-scale-ngram/1":
            raise EvalInputError(f"{path}: format {meta.get('format')!r} is not helm-scale-ngram/1")
        lm = cls(meta["order"], meta["level"], meta["smoothing"], meta["k"], meta["discount"])
        lm.discounts, lm.trained_symbols = list(meta["discounts"]), meta["trained_symbols"]
        names = ("grams", "counts", "contexts", "totals", "types")
        lm.tables = [{n: data[f"o{m}_{n}"] for n in names} for m in range(1, lm.order + 1)]
        return lm
