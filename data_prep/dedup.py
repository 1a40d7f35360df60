"""Exact-duplicate detection in bounded memory: 8 bytes per distinct sequence.

A Python set of ints costs about 70 bytes an entry (15M sequences: ~1 GB); here hashes
sit in a few sorted uint64 runs (a log-structured merge: each run at least twice the
size of the next, so a batch is looked up in O(log n) runs with ``np.searchsorted`` and
each hash is re-sorted O(log n) times in all). Two different sequences share a 64-bit
hash with probability about n^2 / 2^65 (15M sequences: ~6e-6), the price of the bound.
"""
from __future__ import annotations

import numpy as np


class SeenHashes:
    def __init__(self):
        self.runs: list[np.ndarray] = []  # sorted, distinct, sizes decreasing by >= 2x

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def add(self, hashes) -> np.ndarray:
        """Adds hashes in order; returns, per hash, whether it was new (first sighting)."""
        values = np.asarray(hashes, dtype=np.uint64)
        distinct, first = np.unique(values, return_index=True)  # first sighting within the batch
        fresh = np.ones(len(distinct), dtype=bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, distinct), len(run) - 1)
            fresh &= run[pos] != distinct
        new = np.zeros(len(values), dtype=bool)
        new[first[fresh]] = True
        run = distinct[fresh]
        while self.runs and len(self.runs[-1]) <= 2 * len(run):
            run = np.sort(np.concatenate([self.runs.pop(), run]))
        if len(run):
            self.runs.append(run)
        return new
