"""Exact-duplicate detection in bounded memory: 8 bytes per distinct sequence.

A Python set of ints costs about 70 bytes an entry (15M sequences: ~1 GB); here recent
hashes sit in a small set that is merged, when full, into one sorted uint64 array
searched with ``np.searchsorted``. Two different sequences share a 64-bit hash with
probability about n^2 / 2^65 (15M sequences: ~6e-6), the price of the bound.
"""
from __future__ import annotations

import numpy as np


class SeenHashes:
    def __init__(self, merge_at: int = 1 << 20):
        self.merge_at = merge_at
        self.sorted = np.empty(0, dtype=np.uint64)
        self.recent: set[int] = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)

    def add(self, hashes: list[int]) -> np.ndarray:
        """Adds hashes in order; returns, per hash, whether it was new (first sighting)."""
        values = np.array(hashes, dtype=np.uint64)
        if len(self.sorted):
            pos = np.minimum(np.searchsorted(self.sorted, values), len(self.sorted) - 1)
            in_sorted = self.sorted[pos] == values
        else:
            in_sorted = np.zeros(len(values), dtype=bool)
        new = np.zeros(len(values), dtype=bool)
        for i, h in enumerate(hashes):
            if not in_sorted[i] and h not in self.recent:
                self.recent.add(h)
                new[i] = True
        if len(self.recent) >= self.merge_at:
            merged = np.concatenate([self.sorted, np.fromiter(self.recent, np.uint64, len(self.recent))])
            merged.sort()
            self.sorted, self.recent = merged, set()
        return new
