"""Writing shards: atomic, checksummed, deterministic (format: helm_scale.shard_format)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from helm_scale.shard_format import encode_sample, sample_key

PARTIAL_SUFFIX = ".partial"


class _HashingFile:
    """A write-only file that also feeds a sha256, so checksums cost no second read."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


@dataclass
class ShardRecord:
    path: str
    samples: int
    tokens: int
    bytes: int
    sha256: str
    first_key: str


def write_shard(out_dir: str, path: str, first_index: int, samples: list[tuple[bytes, dict]],
                level: int = 3) -> ShardRecord:
    """Write one shard atomically: to ``path.partial``, fsync, then rename.

    ``samples`` are (token bytes, metadata) pairs whose keys follow on from
    ``first_index``. Writing is deterministic (fixed mtime, owner and member order), so
    the same samples always give the same bytes and the same checksum.
    """
    from webdataset import TarWriter  # imports torch: keep `helm-scale --help` light

    final = Path(out_dir) / path
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    compressor = zstandard.ZstdCompressor(level=level)
    n_tokens = 0
    with open(partial, "wb") as f:
        hashing = _HashingFile(f)
        with TarWriter(hashing, encoder=False, mtime=0) as writer:
            for i, (tokens, meta) in enumerate(samples):
                writer.write(encode_sample(first_index + i, tokens, meta, compressor))
                n_tokens += meta["length"]
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, final)
    return ShardRecord(path, len(samples), n_tokens, hashing.size, hashing.sha.hexdigest(),
                       sample_key(first_index))


def file_sha256(path, chunk: int = 1 << 20) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
    return sha.hexdigest()


@dataclass
class SplitSummary:
    samples: int = 0
    tokens: int = 0
    shards: list[ShardRecord] = field(default_factory=list)


def write_json_atomic(path, payload: dict) -> None:
    tmp = Path(str(path) + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
