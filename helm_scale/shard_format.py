"""The shard format shared by the writer (data_prep) and the readers (loader, verify).

A prepared dataset directory holds::

    manifest.json              what was made, from what, how (written by data_prep.prep)
    rejects.jsonl              a bounded sample of rejected records per reason
    {split}/shard-000000.tar   webdataset shards of chunks of consecutive sequences

Format 2. A shard is a plain tar whose webdataset samples are *chunks*: runs of
consecutive sequences of one split, about ``chunk_bytes`` (default 1 MiB) of tokens
each. One member per sequence cost ~1.5 KiB of tar headers and padding, 8x to 200x
the compressed tokens; a chunk spends that once per ~8,000 sequences. Each chunk has
three members, each compressed on its own with zstd, so that the tar stays
streamable by webdataset and indexable by ``wids``:

    {key}.tokens.zst      the chunk's codon ids concatenated (no <cls>/<eos>; the loader
                          adds them), a raw little-endian array of ``token_dtype``, one frame
    {key}.lengths.zst     codon count of each sequence, little-endian uint32: readable
                          without decompressing the tokens (the packing plan needs only it)
    {key}.meta.json.zst   columnar JSON ``{"id": [...], "line_delta": [...], "group": [...]
                          or null, "source": [[path, n], ...]}``: input line numbers as
                          differences from the previous record's (the first from 0),
                          sources as runs of n records

Every zstd frame carries its content checksum, so a damaged member fails to decompress
rather than decoding to wrong tokens.

The key is the zero-padded index within its split of the chunk's first sequence. The
manifest's ``splits[name]["shards"]`` lists each shard's path, samples, tokens, bytes,
sha256, first key and ``chunks`` (``[[samples, tokens], ...]`` in order), so a global
index maps to (shard, chunk, offset) by arithmetic on the manifest alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

FORMAT = "helm-scale-shards/2"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
TOKENS_MEMBER, LENGTHS_MEMBER, META_MEMBER = "tokens.zst", "lengths.zst", "meta.json.zst"
LENGTH_DTYPE = np.dtype("<u4")
DEFAULT_CHUNK_BYTES = 1 << 20


class ShardError(ValueError):
    """A chunk whose members do not decode to what its manifest entry says."""


def sample_key(index: int) -> str:
    return f"{index:010d}"


def shard_name(split: str, number: int) -> str:
    return f"{split}/shard-{number:06d}.tar"


def encode_chunk(first_index: int, tokens: list[bytes], token_dtype: str, ids: list, lines: list,
                 groups: list, sources: list[list], compressor) -> dict:
    """One chunk as a webdataset sample (member name -> bytes). ``sources`` are runs
    ``[path, records]`` covering the chunk's sequences in order."""
    itemsize = np.dtype(token_dtype).itemsize
    lengths = np.fromiter((len(t) // itemsize for t in tokens), dtype=LENGTH_DTYPE, count=len(tokens))
    # Line numbers as differences from the record before: ~1 byte each after zstd, not ~3.
    line_deltas = np.diff(np.asarray(lines, dtype=np.int64), prepend=0).tolist()
    meta = {"id": ids, "line_delta": line_deltas,
            "group": groups if any(g is not None for g in groups) else None, "source": sources}
    return {"__key__": sample_key(first_index),
            TOKENS_MEMBER: compressor.compress(b"".join(tokens)),
            LENGTHS_MEMBER: compressor.compress(lengths.tobytes()),
            META_MEMBER: compressor.compress(json.dumps(meta, separators=(",", ":")).encode())}


@dataclass
class Chunk:
    """A decoded chunk: sequence i is ``tokens[offsets[i]:offsets[i + 1]]``."""

    first_index: int
    tokens: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def _decompress(member: bytes, what: str, where: str, d) -> bytes:
    try:
        return d.decompress(member)
    except zstandard.ZstdError as e:
        raise ShardError(f"{where}: {what} member does not decompress ({e})") from None


def decode_lengths(member: bytes, samples: int, where: str, decompressor=None) -> np.ndarray:
    """Codon counts of a chunk's sequences, checked against the manifest's sample count."""
    raw = _decompress(member, "lengths", where, decompressor or zstandard.ZstdDecompressor())
    if len(raw) != samples * LENGTH_DTYPE.itemsize:
        raise ShardError(f"{where}: lengths member holds {len(raw) / LENGTH_DTYPE.itemsize:g} "
                         f"entries, the manifest says {samples} samples")
    return np.frombuffer(raw, dtype=LENGTH_DTYPE).astype(np.int64)


def decode_chunk(sample: dict, token_dtype: str, samples: int, first_index: int, where: str,
                 decompressor=None) -> Chunk:
    """Tokens and offsets of one chunk (a dict of member bytes, keys with or without the
    leading dot), checked: key, sample count, and lengths summing to the tokens held."""
    d = decompressor or zstandard.ZstdDecompressor()
    member = _members(sample, where)
    if sample["__key__"] != sample_key(first_index):
        raise ShardError(f"{where}: chunk key {sample['__key__']}, expected {sample_key(first_index)}; "
                         "shard and manifest disagree")
    lengths = decode_lengths(member(LENGTHS_MEMBER), samples, where, d)
    dtype = np.dtype(token_dtype)
    raw = _decompress(member(TOKENS_MEMBER), "tokens", where, d)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if len(raw) != int(offsets[-1]) * dtype.itemsize:
        raise ShardError(f"{where}: lengths sum to {int(offsets[-1])} tokens but the tokens member "
                         f"holds {len(raw) / dtype.itemsize:g}")
    return Chunk(first_index, np.frombuffer(raw, dtype=dtype), offsets)


def decode_meta(sample: dict, samples: int, where: str, decompressor=None) -> list[dict]:
    """Per-sequence metadata ``{"id", "source", "line", "group"}`` of one chunk."""
    raw = _decompress(_members(sample, where)(META_MEMBER), "metadata", where,
                      decompressor or zstandard.ZstdDecompressor())
    try:
        meta = json.loads(raw)
        sources = [path for path, n in meta["source"] for _ in range(n)]
        groups = meta["group"] or [None] * len(meta["id"])
        columns = (meta["id"], sources, np.cumsum(meta["line_delta"], dtype=np.int64).tolist(), groups)
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{where}: metadata member is not the columnar JSON of format 2 ({e})") from None
    if any(len(c) != samples for c in columns):
        raise ShardError(f"{where}: metadata lists {[len(c) for c in columns]} entries per column, "
                         f"expected {samples}")
    return [{"id": i, "source": s, "line": line, "group": g} for i, s, line, g in zip(*columns)]


def _members(sample: dict, where: str):
    def member(name: str) -> bytes:
        value = sample.get(name, sample.get("." + name))
        if value is None:
            raise ShardError(f"{where}: chunk {sample.get('__key__')} has no {name} member")
        return value.getvalue() if hasattr(value, "getvalue") else value
    return member


def chunk_table(shard: dict) -> np.ndarray:
    """``[[samples, tokens], ...]`` of one manifest shard entry as an int64 array."""
    return np.asarray(shard["chunks"], dtype=np.int64).reshape(-1, 2)


def read_manifest(dataset_dir) -> dict:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{dataset_dir} has no {MANIFEST}: not a prepared dataset "
                                "(or its preparation did not finish)")
    manifest = json.loads(path.read_text())
    found = manifest.get("format")
    if found != FORMAT:
        inputs = " ".join(str(i["path"]) for i in manifest.get("inputs", [])) or "INPUTS"
        raise ValueError(
            f"{path}: shard format {found!r}, this helm-scale reads {FORMAT!r} only "
            f"({'one tar member per sequence, 8x larger' if found == 'helm-scale-shards/1' else 'unknown'})"
            f". Rebuild it (prep is deterministic; use the options recorded under 'settings'): "
            f"helm-scale prep {inputs} -o {dataset_dir} --overwrite")
    return manifest


def shard_urls(dataset_dir, split: str) -> list[str]:
    """Absolute shard paths of one split, in order, as the manifest lists them."""
    manifest = read_manifest(dataset_dir)
    return [str(Path(dataset_dir) / s["path"]) for s in manifest["splits"][split]["shards"]]
