"""Writing shards: atomic, checksummed, deterministic (format: helm_scale.shard_format)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import zstandard

from helm_scale.shard_format import encode_chunk, sample_key

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
    chunks: list[list[int]] = field(default_factory=list)  # [samples, tokens] per chunk


@dataclass
class ChunkColumns:
    """One chunk's sequences as columns, before encoding (what a worker is sent)."""

    first_index: int
    tokens: list[bytes] = field(default_factory=list)
    ids: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    sources: list[list] = field(default_factory=list)  # runs [path, records]
    n_tokens: int = 0
    token_bytes: int = 0

    def add(self, tokens: bytes, n_tokens: int, record_id, source: str, line, group) -> None:
        self.tokens.append(tokens)
        self.ids.append(record_id)
        self.lines.append(line)
        self.groups.append(group)
        if self.sources and self.sources[-1][0] == source:
            self.sources[-1][1] += 1
        else:
            self.sources.append([source, 1])
        self.n_tokens += n_tokens
        self.token_bytes += len(tokens)

    def __len__(self) -> int:
        return len(self.tokens)


@lru_cache(maxsize=4)
def _compressor(level: int) -> zstandard.ZstdCompressor:
    # A content checksum per frame (4 bytes): readers then catch a corrupted member for free.
    return zstandard.ZstdCompressor(level=level, write_checksum=True)


def encode_columns(chunk: ChunkColumns, token_dtype: str, level: int) -> tuple[dict, int, int]:
    """(the chunk's members, samples, tokens): the CPU-heavy part, run on a worker."""
    sample = encode_chunk(chunk.first_index, chunk.tokens, token_dtype, chunk.ids, chunk.lines,
                          chunk.groups, chunk.sources, _compressor(level))
    return sample, len(chunk), chunk.n_tokens


class ShardWriter:
    """One shard being written: chunks appended in order to ``path.partial``; ``close``
    fsyncs and renames it into place. Deterministic (fixed mtime, owner and member
    order), so the same chunks always give the same bytes and the same checksum."""

    def __init__(self, out_dir: str, path: str, first_index: int):
        from webdataset import TarWriter  # imports torch: keep `helm-scale --help` light

        self.final = Path(out_dir) / path
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.final.with_name(self.final.name + PARTIAL_SUFFIX)
        self.record = ShardRecord(path, 0, 0, 0, "", sample_key(first_index))
        self._file = open(self.partial, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = TarWriter(self._hashing, encoder=False, mtime=0)

    @property
    def bytes_written(self) -> int:
        # The archive's own offset: tarfile's stream mode buffers 10 KiB before writing.
        return self._tar.tarstream.offset

    def write(self, sample: dict, samples: int, tokens: int) -> None:
        self._tar.write(sample)
        self.record.samples += samples
        self.record.tokens += tokens
        self.record.chunks.append([samples, tokens])

    def close(self) -> ShardRecord:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.final)
        self.record.bytes, self.record.sha256 = self._hashing.size, self._hashing.sha.hexdigest()
        return self.record

    def abandon(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
    return sha.hexdigest()


def write_json_atomic(path, payload: dict) -> None:
    tmp = Path(str(path) + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
