"""The global sample order of an epoch and its cut into rows: pure functions of
(seed, epoch) and the manifest, never of ranks, workers or where a run resumed.

Order. The epoch's shards are permuted with (seed, epoch); their samples, concatenated in
that order, are cut into windows of ``window`` consecutive positions, and each window is
permuted with (seed, epoch, window). That is a bounded shuffle buffer: a reader needs
only the shards under one window at a time, and the order is computed from the
manifest's sample counts without reading any data.

Rows. Without packing a row is one sample. With packing, consecutive samples of a window
are packed greedily (next fit) into rows of ``seq_len`` tokens; packing restarts at each
window so a window's rows depend on that window alone (at most one part-filled row per
window is the price). Row counts per window are kept, rows themselves are recomputed for
the window being read, so memory stays O(window + shards) however large the split.

The global batch of a step is ``G = micro_batch x dp_size`` consecutive rows; the loader
state is "rows consumed in this epoch", which means the same thing at every DP size.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import accumulate
from typing import Callable, Sequence

import numpy as np

# Salts keep the streams of one (seed, epoch) apart.
_SHARD_STREAM, _WINDOW_STREAM, _BUCKET_STREAM = 1, 2, 3


def _rng(*key: int) -> np.random.Generator:
    # PCG64 seeded through SeedSequence: numpy documents this stream as stable across
    # versions for a given seed sequence, which resume across upgrades relies on.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def specials_length(codons: np.ndarray, seq_len: int) -> np.ndarray:
    """Row tokens a sample occupies: ``<cls> codons <eos>``, cut to ``seq_len``."""
    return np.minimum(np.asarray(codons, dtype=np.int64) + 2, seq_len)


def next_fit_row_starts(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Indices of the samples that open a new row when packed greedily in order.

    Written by hand because next fit is sequential; ``accumulate`` keeps the loop in C:
    the running fill restarts at a sample's own length exactly when it opens a row
    (every length is >= 2, so a continued fill is always larger than the sample alone).
    """
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    fill = np.fromiter(accumulate(lengths.tolist(), lambda a, x: a + x if a + x <= seq_len else x),
                       dtype=np.int64, count=len(lengths))
    return np.flatnonzero(fill == lengths)


class EpochOrder:
    """Global sample indices of one epoch, window by window."""

    def __init__(self, shard_sizes: Sequence[int], seed: int, epoch: int, window: int,
                 shuffle: bool = True, bucket: int = 0, lengths: np.ndarray | None = None):
        """``bucket`` k > 0 (needs every sample's ``lengths``): each window, once shuffled,
        is sorted by length and cut into runs of k samples, and the runs are shuffled, so
        k consecutive positions hold similar lengths while their order stays random."""
        if window < 1:
            raise ValueError("shuffle window must be at least one sample")
        if bucket < 0 or (bucket and lengths is None):
            raise ValueError("a length bucket needs bucket >= 1 and the samples' lengths")
        self.bucket, self.lengths = bucket, lengths
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        first_index = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        perm = _rng(seed, epoch, _SHARD_STREAM).permutation(len(sizes)) if shuffle else np.arange(len(sizes))
        self.seed, self.epoch, self.window, self.shuffle = seed, epoch, window, shuffle
        self._sizes, self._firsts = sizes[perm], first_index[perm]
        self._ends = np.cumsum(self._sizes)  # end position of each permuted shard in the epoch
        self.num_samples = int(sizes.sum())
        self.num_windows = -(-self.num_samples // window)
        self.window_samples = lru_cache(maxsize=4)(self._window_samples)

    def _window_samples(self, w: int) -> np.ndarray:
        lo, hi = w * self.window, min((w + 1) * self.window, self.num_samples)
        first = int(np.searchsorted(self._ends, lo, side="right"))
        last = int(np.searchsorted(self._ends, hi - 1, side="right"))
        parts = []
        for s in range(first, last + 1):
            start_pos = int(self._ends[s] - self._sizes[s])
            a, b = max(lo, start_pos) - start_pos, min(hi, int(self._ends[s])) - start_pos
            parts.append(self._firsts[s] + np.arange(a, b, dtype=np.int64))
        samples = np.concatenate(parts)
        if self.shuffle:
            samples = _rng(self.seed, self.epoch, _WINDOW_STREAM, w).permutation(samples)
        if self.bucket:  # stable: equal lengths keep the shuffled order
            samples = samples[np.argsort(self.lengths[samples], kind="stable")]
            runs = np.arange(-(-len(samples) // self.bucket))
            if self.shuffle:
                runs = _rng(self.seed, self.epoch, _BUCKET_STREAM, w).permutation(runs)
            starts = runs * self.bucket
            sizes = np.minimum(starts + self.bucket, len(samples)) - starts
            samples = samples[np.repeat(starts, sizes) + np.arange(len(samples))
                              - np.repeat(np.cumsum(sizes) - sizes, sizes)]
        return samples

    def all_samples(self) -> np.ndarray:
        """The whole epoch's order (tests and small splits; O(samples) memory)."""
        return np.concatenate([self.window_samples(w) for w in range(self.num_windows)])


class RowPlan:
    """Rows of an epoch: each row is the array of global sample indices it holds."""

    def __init__(self, order: EpochOrder, seq_len: int,
                 codon_lengths: np.ndarray | None = None):
        self.order, self.seq_len = order, seq_len
        self.packed = codon_lengths is not None
        self._lengths = None if codon_lengths is None else specials_length(codon_lengths, seq_len)
        self._window_rows = lru_cache(maxsize=4)(self._rows_of_window)
        if self.packed:
            counts = [len(self._window_rows(w)[0]) for w in range(order.num_windows)]
        else:  # a row per sample: window sizes follow from the counts alone
            counts = [min(order.window, order.num_samples - w * order.window)
                      for w in range(order.num_windows)]
        self._row_ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        self.num_rows = int(self._row_ends[-1]) if len(counts) else 0

    def _rows_of_window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(row start offsets into the window's samples, the window's samples)."""
        samples = self.order.window_samples(w)
        return next_fit_row_starts(self._lengths[samples], self.seq_len), samples

    def rows(self, start: int, stop: int) -> list[np.ndarray]:
        if not 0 <= start <= stop <= self.num_rows:
            raise IndexError(f"rows [{start}, {stop}) outside the epoch's {self.num_rows} rows")
        out: list[np.ndarray] = []
        row = start
        while row < stop:
            w = int(np.searchsorted(self._row_ends, row, side="right"))
            window_first_row = int(self._row_ends[w - 1]) if w else 0
            local, n_local = row - window_first_row, min(stop, int(self._row_ends[w])) - window_first_row
            if self.packed:
                starts, samples = self._window_rows(w)
                bounds = np.append(starts, len(samples))
                out.extend(samples[bounds[i]:bounds[i + 1]] for i in range(local, n_local))
            else:
                samples = self.order.window_samples(w)
                out.extend(samples[i:i + 1] for i in range(local, n_local))
            row = window_first_row + n_local
        return out


PlanFactory = Callable[[int], RowPlan]
