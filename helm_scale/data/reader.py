"""Random access to a split's samples by global index, through wids' indexed tar reader.

webdataset streams a tar front to back; a data-parallel rank that needs one sample in
``dp_size`` would read (and untar) every one. wids indexes each tar once (an mmap and a
header scan) and then fetches any member directly, so a rank reads only its samples.
We use wids' per-shard ``IndexedTarSamples`` rather than its ``ShardListDataset``: the
latter copies local shards into a cache directory and writes lock files beside them,
which a read-only dataset directory (and a disk the size of the corpus) cannot afford;
the manifest already gives the shard list and counts it would need.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import zstandard

from helm_scale.codon import Vocabulary
from helm_scale.shard_format import SPLITS, TOKENS_MEMBER, read_manifest, sample_key

try:
    from wids.wids import IndexedTarSamples
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("helm_scale.data needs webdataset's indexed reader: pip install wids") from exc

_TOKENS_EXT = "." + TOKENS_MEMBER


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
    """Token arrays of one split by global sample index (the key within the split).

    Keeps at most ``max_open_shards`` shards open (each holds an mmap and its index);
    opened lazily, so a reader built in the main process costs nothing in workers.
    """

    def __init__(self, dataset_dir: str | Path, split: str, max_open_shards: int = 8,
                 manifest: dict | None = None):
        manifest = manifest or read_manifest(dataset_dir)
        shards = manifest["splits"][split]["shards"]
        self.dataset_dir, self.split = Path(dataset_dir), split
        self.token_dtype = np.dtype(manifest["token_dtype"])
        self.paths = [str(self.dataset_dir / s["path"]) for s in shards]
        self.shard_sizes = np.array([s["samples"] for s in shards], dtype=np.int64)
        self._shard_ends = np.cumsum(self.shard_sizes)
        self.num_samples = int(self._shard_ends[-1]) if len(shards) else 0
        self.max_open_shards = max(1, max_open_shards)
        self._open: OrderedDict[int, IndexedTarSamples] = OrderedDict()
        self._decompressor = None

    def __getstate__(self):
        # Open mmaps and zstd contexts stay with the process that made them.
        state = self.__dict__.copy()
        state["_open"], state["_decompressor"] = OrderedDict(), None
        return state

    def _shard(self, number: int) -> IndexedTarSamples:
        shard = self._open.get(number)
        if shard is None:
            shard = IndexedTarSamples(path=self.paths[number],
                                      expected_size=int(self.shard_sizes[number]))
            self._open[number] = shard
            while len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(number)
        return shard

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} outside the split's {self.num_samples}")
        number = int(np.searchsorted(self._shard_ends, index, side="right"))
        return number, index - int(self._shard_ends[number] - self.shard_sizes[number])

    def _member(self, index: int) -> bytes:
        number, inner = self._locate(index)
        sample = self._shard(number)[inner]
        # Keys are the sample's index in the split: a cheap proof we read the right one.
        if sample["__key__"] != sample_key(index):
            raise ValueError(f"{self.paths[number]}: sample {inner} has key {sample['__key__']}, "
                             f"expected {sample_key(index)}; shard and manifest disagree")
        return sample[_TOKENS_EXT].getvalue()

    def tokens(self, index: int) -> np.ndarray:
        """The sample's codon ids (no specials), as stored."""
        if self._decompressor is None:
            self._decompressor = zstandard.ZstdDecompressor()
        return np.frombuffer(self._decompressor.decompress(self._member(index)), dtype=self.token_dtype)

    def codon_lengths(self) -> np.ndarray:
        """Codon count of every sample, read from the zstd frame headers (no decompression).

        Packing needs every length before the first batch; this touches each shard once.
        """
        out = np.empty(self.num_samples, dtype=np.int64)
        for number, path in enumerate(self.paths):
            shard = IndexedTarSamples(path=path, expected_size=int(self.shard_sizes[number]))
            try:
                first = int(self._shard_ends[number] - self.shard_sizes[number])
                for inner in range(len(shard)):
                    member = shard[inner][_TOKENS_EXT].getvalue()
                    size = zstandard.frame_content_size(member)
                    if size < 0:  # a frame written without its content size
                        size = len(zstandard.ZstdDecompressor().decompress(member))
                    out[first + inner] = size // self.token_dtype.itemsize
            finally:
                shard.close()
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()
