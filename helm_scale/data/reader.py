"""Random access to a split's sequences by global index: the one reader of shards.

A shard (format 3, see helm_scale.shard_format) holds chunks of consecutive sequences.
The manifest lists every chunk's sample count, so a global index maps to (shard, chunk,
offset) by a binary search over the chunk ends, without touching data. Shards are
opened with wids' mmap tar index (one header scan, then any member by name), so a
data-parallel rank reads only the chunks its samples live in. We use wids'
``MMIndexedTar`` rather than its ``ShardListDataset``: the latter copies local shards
into a cache directory and writes lock files beside them, which a read-only dataset
directory (and a disk the size of the corpus) cannot afford.

Decompressed chunks (~1 MiB each) sit in a small LRU cache; the loader sizes it to
hold a shuffle window's chunks, so each chunk is decompressed about once per window.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import zstandard

from helm_scale.codon import Vocabulary
from helm_scale.shard_format import (CHUNK_MEMBER, SPLITS, Chunk,
                                     ShardError, chunk_table, decode_chunk, decode_lengths,
                                     decode_meta, read_manifest, sample_key)

try:
    from wids.wids_mmtar import MMIndexedTar
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("helm_scale.data needs webdataset's indexed reader: pip install wids") from exc


def check_manifest(manifest: dict, split: str, vocabulary: Vocabulary) -> None:
    """Refuse a dataset made with another vocabulary, or a split it does not have."""
    recorded = manifest.get("vocabulary_fingerprint")
    if recorded != vocabulary.fingerprint:
        raise ValueError(f"dataset vocabulary fingerprint {recorded} differs from the expected "
                         f"{vocabulary.fingerprint}: it was made with another token order")
    if Vocabulary.from_dict(manifest["vocabulary"]).fingerprint != recorded:
        raise ValueError("manifest vocabulary does not match its own fingerprint (edited by hand?)")
    if split not in SPLITS or split not in manifest["splits"]:
        raise ValueError(f"split {split!r} not in the dataset (has {sorted(manifest['splits'])})")
    if manifest["splits"][split]["samples"] == 0:
        raise ValueError(f"split {split!r} of the dataset is empty")


class SplitReader:
    """Token arrays of one split by global sample index (the position within the split).

    Keeps at most ``max_open_shards`` shards open (an mmap and a header index each) and
    ``cache_chunks`` decompressed chunks; both fill lazily, so a reader built in the
    main process costs nothing in workers.
    """

    def __init__(self, dataset_dir: str | Path, split: str, cache_chunks: int = 16,
                 manifest: dict | None = None, max_open_shards: int = 16):
        manifest = manifest or read_manifest(dataset_dir)
        shards = manifest["splits"][split]["shards"]
        self.dataset_dir, self.split = Path(dataset_dir), split
        self.token_dtype = np.dtype(manifest["token_dtype"])
        self.paths = [str(self.dataset_dir / s["path"]) for s in shards]
        self.shard_sizes = np.array([s["samples"] for s in shards], dtype=np.int64)
        tables = [chunk_table(s) for s in shards]
        for s, table in zip(shards, tables):
            if int(table[:, 0].sum()) != s["samples"]:
                raise ShardError(f"{s['path']}: the manifest's chunks hold {int(table[:, 0].sum())} "
                                 f"samples, its shard entry says {s['samples']}")
        self.chunk_samples = np.concatenate([t[:, 0] for t in tables] or [np.zeros(0, np.int64)])
        self.chunk_tokens = np.concatenate([t[:, 1] for t in tables] or [np.zeros(0, np.int64)])
        self.chunk_shard = np.repeat(np.arange(len(shards)), [len(t) for t in tables])
        self.chunk_ends = np.cumsum(self.chunk_samples)
        self.chunk_firsts = self.chunk_ends - self.chunk_samples
        self.num_samples = int(self.chunk_ends[-1]) if len(self.chunk_ends) else 0
        self.cache_chunks, self.max_open_shards = max(1, cache_chunks), max(1, max_open_shards)
        self._open: OrderedDict[int, MMIndexedTar] = OrderedDict()
        self._cache: OrderedDict[int, Chunk] = OrderedDict()
        self._decompressor = None

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_samples)

    def __getstate__(self):
        # Open mmaps, cached chunks and zstd contexts stay with the process that made them.
        state = self.__dict__.copy()
        state["_open"], state["_cache"], state["_decompressor"] = OrderedDict(), OrderedDict(), None
        return state

    def _shard(self, number: int) -> MMIndexedTar:
        shard = self._open.get(number)
        if shard is None:
            try:
                shard = MMIndexedTar(self.paths[number], verbose=False)
            except (OSError, ValueError) as e:
                raise ShardError(f"{self.paths[number]}: cannot open as a tar ({e})") from None
            self._open[number] = shard
            while len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(number)
        return shard

    def _where(self, chunk: int) -> str:
        shard = int(self.chunk_shard[chunk])
        first_chunk = int(np.searchsorted(self.chunk_shard, shard))
        return f"{self.paths[shard]} chunk {chunk - first_chunk} (key {sample_key(int(self.chunk_firsts[chunk]))})"

    def _member(self, chunk: int) -> bytes:
        shard = self._shard(int(self.chunk_shard[chunk]))
        full = f"{sample_key(int(self.chunk_firsts[chunk]))}.{CHUNK_MEMBER}"
        if full not in shard.by_name:
            raise ShardError(f"{self._where(chunk)}: no member {full}; shard and manifest disagree")
        return shard.get_by_name(full)[1]

    def _d(self) -> zstandard.ZstdDecompressor:
        if self._decompressor is None:
            self._decompressor = zstandard.ZstdDecompressor()
        return self._decompressor

    def chunk(self, number: int) -> Chunk:
        """A decoded, checked chunk (from the cache when it is there)."""
        cached = self._cache.get(number)
        if cached is not None:
            self._cache.move_to_end(number)
            return cached
        first = int(self.chunk_firsts[number])
        sample = {"__key__": sample_key(first), CHUNK_MEMBER: self._member(number)}
        decoded = decode_chunk(sample, self.token_dtype.name, int(self.chunk_samples[number]), first,
                               self._where(number), self._d())
        self._cache[number] = decoded
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return decoded

    def chunk_of(self, index: int) -> int:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} outside the split's {self.num_samples}")
        return int(np.searchsorted(self.chunk_ends, index, side="right"))

    def tokens(self, index: int) -> np.ndarray:
        """The sample's codon ids (no specials), as stored."""
        number = self.chunk_of(index)
        return self.chunk(number).sequence(index - int(self.chunk_firsts[number]))

    def tokens_of(self, indices) -> list[np.ndarray]:
        """Codon ids of many samples, in the order given; each chunk is fetched once."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and not (0 <= indices.min() and indices.max() < self.num_samples):
            raise IndexError(f"samples outside the split's {self.num_samples}")
        chunks = np.searchsorted(self.chunk_ends, indices, side="right")
        out: list = [None] * len(indices)
        for number in np.unique(chunks).tolist():
            chunk, first = self.chunk(number), int(self.chunk_firsts[number])
            for k in np.flatnonzero(chunks == number).tolist():
                out[k] = chunk.sequence(int(indices[k]) - first)
        return out

    def metadata(self, number: int) -> list[dict]:
        """``{"id", "source", "line", "group"}`` of every sequence of chunk ``number``."""
        sample = {"__key__": sample_key(int(self.chunk_firsts[number])),
                  CHUNK_MEMBER: self._member(number)}
        return decode_meta(sample, int(self.chunk_samples[number]), self._where(number), self._d())

    def codon_lengths(self) -> np.ndarray:
        """Codon count of every sample, from the small meta frames alone (the tokens
        stay compressed): what packing needs before the first batch."""
        out = np.empty(self.num_samples, dtype=np.int64)
        for number in range(self.num_chunks):
            first, n = int(self.chunk_firsts[number]), int(self.chunk_samples[number])
            lengths = decode_lengths(self._member(number), n, self._where(number), self._d())
            if int(lengths.sum()) != int(self.chunk_tokens[number]):
                raise ShardError(f"{self._where(number)}: lengths sum to {int(lengths.sum())} tokens, "
                                 f"the manifest says {int(self.chunk_tokens[number])}")
            out[first:first + n] = lengths
        return out

    def close(self) -> None:
        self._cache.clear()
        while self._open:
            self._open.popitem()[1].close()
