"""The shard format shared by the writer (data_prep) and the readers (loader, verify).

A prepared dataset directory holds::

    manifest.json              what was made, from what, how (written by data_prep.prep)
    rejects.jsonl              a bounded sample of rejected records per reason
    {split}/shard-000000.tar   webdataset shards of chunks of consecutive sequences

Format 3. A shard is a plain tar whose webdataset samples are *chunks*: runs of
consecutive sequences of one split, about ``chunk_bytes`` (default 1 MiB) of tokens
each (format 1 spent ~1.5 KiB of tar headers per sequence; a chunk spends ~1.5 KiB per
~8,000). Each chunk is one member, ``{key}.chunk.zst``, so that the tar stays
streamable by webdataset and indexable by ``wids``; it holds two zstd frames (``zstd -d``
writes both, one after the other):

    meta     the chunk's per-sequence columns (below): small and first, so the lengths
             the packing plan needs are read without decompressing any tokens
    tokens   the chunk's codon ids concatenated (no <cls>/<eos>; the loader adds them),
             a raw little-endian array of ``token_dtype``

One member rather than one per frame halves the tar headers and padding (~770 bytes a
member), which on a small antibody corpus were 9% of the shards. The meta frame,
decompressed: a 4-byte little-endian length, that many bytes of JSON
``{"samples": n, "source": [[path, n], ...], "tables": {name: [str, ...]},
"columns": [[name, dtype, nbytes], ...]}``, then the columns' bytes in that order. A
column is an array of the narrowest unsigned dtype that holds it, stored byte plane by
byte plane (all first bytes, then all second bytes, ...: the planes of small numbers
are runs of zeros), which is what makes it compress::

    lengths                   codons per sequence
    line                      input line, as the difference from the record before
                              (zigzag-coded: sources restart their lines)
    {s}_prefix, {s}_number,   a string column s (``id``; ``group`` when any record has
    {s}_digits                one) cut into a prefix and a numeric suffix of at most 18
                              ASCII digits: ``tables[s][prefix] + str(number).zfill(digits)``
                              (no suffix when digits = 0). The table is in order of first
                              use; prefix indices and numbers are stored as differences
                              from the record before (zigzag), so ``run:SRR1298732.1``,
                              ``run:SRR1298732.7``, ... cost about a byte each, not 30
    group_missing             1 where a record has no group key (only when some do)

Zigzag maps a signed difference d to 2d (d >= 0) or -2d - 1 (d < 0). Every zstd frame
carries its content checksum, so a damaged member fails to decompress rather than
decoding to wrong tokens or ids. Format 2 had three members per chunk, uint32 lengths and
JSON metadata (together 0.5x the tokens on antibody corpora, now 0.17x); format 1 two
members per sequence; both are refused with the command that rebuilds them.

The key is the zero-padded index within its split of the chunk's first sequence. The
manifest's ``splits[name]["shards"]`` lists each shard's path, samples, tokens, bytes,
sha256, first key and ``chunks`` (``[[samples, tokens], ...]`` in order), so a global
index maps to (shard, chunk, offset) by arithmetic on the manifest alone. A shard ends
with tar's two zero blocks, without tarfile's padding to 10 KiB records.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

FORMAT = "helm-scale-shards/3"
OLD_FORMATS = {"helm-scale-shards/1": "one tar member per sequence, 8x larger",
               "helm-scale-shards/2": "JSON metadata, 1.9x zstd of the tokens on antibody corpora"}
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
CHUNK_MEMBER = "chunk.zst"
DEFAULT_CHUNK_BYTES = 1 << 20
MAX_DIGITS = 18  # a numeric suffix of up to 18 digits fits int64, and so do differences


class ShardError(ValueError):
    """A chunk whose members do not decode to what its manifest entry says."""


def sample_key(index: int) -> str:
    return f"{index:010d}"


def shard_name(split: str, number: int) -> str:
    return f"{split}/shard-{number:06d}.tar"


# --- columns ---------------------------------------------------------------------------

def _zigzag(d: np.ndarray) -> np.ndarray:
    d = d.astype(np.int64)
    return ((d << 1) ^ (d >> 63)).astype(np.uint64)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    return (z >> np.uint64(1)).astype(np.int64) ^ -(z & np.uint64(1)).astype(np.int64)


def _planes(values: np.ndarray) -> tuple[str, bytes]:
    """Narrowest unsigned dtype holding ``values`` (>= 0), bytes stored plane by plane."""
    top = int(values.max()) if len(values) else 0
    dtype = np.dtype(next(t for t in ("<u1", "<u2", "<u4", "<u8") if top < 1 << (8 * int(t[-1]))))
    narrow = values.astype(dtype)
    return dtype.str, narrow.view(np.uint8).reshape(-1, dtype.itemsize).T.tobytes()


def _unplanes(dtype: str, raw: bytes, n: int) -> np.ndarray:
    dt = np.dtype(dtype)
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dt.itemsize, n)
    return np.ascontiguousarray(planes.T).view(dt).reshape(n).astype(np.int64 if dt.itemsize < 8 else np.uint64)


def _split_numbers(values: list[str]) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """Each string as (prefix table, prefix index, trailing-digit number, digit count).

    NumPy over the UTF-8 bytes of all strings at once finds the suffixes (ASCII digits
    are single bytes in UTF-8, so a cut before them never splits a character)."""
    blob = "".join(values)
    if blob.isascii():
        raw, sizes = blob.encode("ascii"), np.fromiter(map(len, values), np.int64, len(values))
    else:
        encoded = [v.encode() for v in values]
        raw, sizes = b"".join(encoded), np.fromiter(map(len, encoded), np.int64, len(values))
    b = np.frombuffer(raw, dtype=np.uint8)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    is_digit = (b - 48) < 10  # uint8 wraps below '0'
    last_other = np.maximum.accumulate(np.where(is_digit, -1, np.arange(len(b))))  # per position
    before = np.where(ends > starts, last_other[np.maximum(ends - 1, 0)] if len(b) else -1, ends - 1)
    digits = np.minimum(ends - 1 - np.maximum(before, starts - 1), MAX_DIGITS)
    numbers = np.zeros(len(values), dtype=np.int64)
    for k in range(MAX_DIGITS):  # Horner over digit k of every suffix that has one
        has = digits > k
        if not has.any():
            break
        at = np.where(has, ends - digits + k, 0)
        numbers = np.where(has, numbers * 10 + (b[at] - 48 if len(b) else 0), numbers)
    table: dict[bytes, int] = {}
    index = [table.setdefault(raw[a:e], len(table)) for a, e in zip(starts.tolist(), (ends - digits).tolist())]
    return [t.decode() for t in table], index, numbers, digits


def _join_numbers(table: list[str], index: np.ndarray, numbers: np.ndarray, digits: np.ndarray) -> list[str]:
    return [table[i] + (str(n).zfill(d) if d else "")
            for i, n, d in zip(index.tolist(), numbers.tolist(), digits.tolist())]


def _string_columns(name: str, values: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    table, index, numbers, digits = _split_numbers(values)
    # The number of a record without one repeats the one before: its difference is 0.
    numbers = np.where(digits > 0, numbers, 0)
    carried = np.maximum.accumulate(np.where(digits > 0, np.arange(len(values)), -1))
    numbers = np.where(carried >= 0, numbers[np.maximum(carried, 0)], 0)
    return table, {f"{name}_prefix": _zigzag(np.diff(np.asarray(index, np.int64), prepend=0)),
                   f"{name}_number": _zigzag(np.diff(numbers, prepend=0)),
                   f"{name}_digits": digits.astype(np.uint64)}


def encode_chunk(first_index: int, tokens: np.ndarray, lengths: np.ndarray, ids: list[str],
                 lines: np.ndarray, groups: list | None, sources: list[list], compressor) -> dict:
    """One chunk as a webdataset sample (member name -> bytes). ``sources`` are runs
    ``[path, records]`` covering the chunk's sequences in order; ``groups`` is None when
    no record has a group key."""
    columns = {"lengths": np.asarray(lengths, dtype=np.uint64),
               "line": _zigzag(np.diff(np.asarray(lines, dtype=np.int64), prepend=0))}
    tables = {}
    tables["id"], more = _string_columns("id", ids)
    columns.update(more)
    if groups is not None:
        tables["group"], more = _string_columns("group", ["" if g is None else g for g in groups])
        columns.update(more)
        if any(g is None for g in groups):
            columns["group_missing"] = np.fromiter((g is None for g in groups), np.uint64, len(groups))
    encoded = {name: _planes(values) for name, values in columns.items()}
    header = json.dumps({"samples": len(lengths), "source": sources, "tables": tables,
                         "columns": [[name, dtype, len(raw)] for name, (dtype, raw) in encoded.items()]},
                        separators=(",", ":")).encode()
    meta = b"".join([len(header).to_bytes(4, "little"), header, *(raw for _, raw in encoded.values())])
    return {"__key__": sample_key(first_index),
            CHUNK_MEMBER: compressor.compress(meta) + compressor.compress(np.ascontiguousarray(tokens).tobytes())}


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


def _frame(data: bytes, what: str, where: str, d) -> tuple[bytes, bytes]:
    """The first zstd frame of ``data`` decompressed, and the bytes after it."""
    try:
        frame = d.decompressobj()
        raw = frame.decompress(data)
        if not frame.eof:
            raise zstandard.ZstdError("truncated")
        return raw, frame.unused_data
    except zstandard.ZstdError as e:
        raise ShardError(f"{where}: {what} frame does not decompress ({e})") from None


def _meta_columns(raw: bytes, samples: int, where: str, wanted=None) -> tuple[dict, dict]:
    """(header, {column: int64 array}) of a decompressed meta frame, checked against
    ``samples``."""
    try:
        size = int.from_bytes(raw[:4], "little")
        header = json.loads(raw[4:4 + size])
        at, columns = 4 + size, {}
        for name, dtype, nbytes in header["columns"]:
            if wanted is None or name in wanted:
                if nbytes != samples * np.dtype(dtype).itemsize:
                    raise ShardError(f"{where}: meta column {name} holds {nbytes / np.dtype(dtype).itemsize:g} "
                                     f"entries, the manifest says {samples} samples")
                columns[name] = _unplanes(dtype, raw[at:at + nbytes], samples)
            at += nbytes
        if at != len(raw) or header["samples"] != samples:
            raise ShardError(f"{where}: meta frame holds {header['samples']} samples in {len(raw)} bytes, "
                             f"the manifest says {samples} samples")
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, ShardError):
            raise
        raise ShardError(f"{where}: meta frame is not the columns of format 3 ({e})") from None
    return header, columns


def decode_lengths(member: bytes, samples: int, where: str, decompressor=None) -> np.ndarray:
    """Codon counts of a chunk's sequences (its meta frame alone), checked against the
    manifest's sample count."""
    raw, _ = _frame(member, "meta", where, decompressor or zstandard.ZstdDecompressor())
    return _lengths(raw, samples, where)


def _lengths(meta: bytes, samples: int, where: str) -> np.ndarray:
    _, columns = _meta_columns(meta, samples, where, wanted={"lengths"})
    if "lengths" not in columns:
        raise ShardError(f"{where}: meta frame has no lengths column")
    return columns["lengths"]


def decode_chunk(sample: dict, token_dtype: str, samples: int, first_index: int, where: str,
                 decompressor=None) -> Chunk:
    """Tokens and offsets of one chunk (a dict of member bytes, keys with or without the
    leading dot), checked: key, sample count, and lengths summing to the tokens held."""
    d = decompressor or zstandard.ZstdDecompressor()
    member = _member(sample, where)
    if sample["__key__"] != sample_key(first_index):
        raise ShardError(f"{where}: chunk key {sample['__key__']}, expected {sample_key(first_index)}; "
                         "shard and manifest disagree")
    meta, tokens_frame = _frame(member, "meta", where, d)
    lengths = _lengths(meta, samples, where)
    dtype = np.dtype(token_dtype)
    raw, rest = _frame(tokens_frame, "tokens", where, d)
    if rest:
        raise ShardError(f"{where}: {len(rest)} bytes after the tokens frame")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(raw) != int(offsets[-1]) * dtype.itemsize:
        raise ShardError(f"{where}: lengths sum to {int(offsets[-1])} tokens but the tokens frame "
                         f"holds {len(raw) / dtype.itemsize:g}")
    return Chunk(first_index, np.frombuffer(raw, dtype=dtype), offsets)


def _strings(name: str, header: dict, columns: dict) -> list[str]:
    numbers = np.cumsum(_unzigzag(columns[f"{name}_number"]))
    index = np.cumsum(_unzigzag(columns[f"{name}_prefix"]))
    table = header["tables"][name]
    if len(index) and not (0 <= index.min() and index.max() < len(table)):
        raise ShardError(f"{name} prefix index outside its table of {len(table)}")
    return _join_numbers(table, index, numbers, columns[f"{name}_digits"])


def decode_meta(sample: dict, samples: int, where: str, decompressor=None) -> list[dict]:
    """Per-sequence metadata ``{"id", "source", "line", "group"}`` of one chunk."""
    raw, _ = _frame(_member(sample, where), "meta", where, decompressor or zstandard.ZstdDecompressor())
    header, columns = _meta_columns(raw, samples, where)
    try:
        sources = [path for path, n in header["source"] for _ in range(n)]
        ids = _strings("id", header, columns)
        groups = [None] * samples
        if "group" in header["tables"]:
            missing = columns.get("group_missing", np.zeros(samples, np.int64)).tolist()
            groups = [None if m else g for g, m in zip(_strings("group", header, columns), missing)]
        lines = np.cumsum(_unzigzag(columns["line"])).tolist()
    except (ValueError, KeyError, TypeError, ShardError) as e:
        raise ShardError(f"{where}: meta frame is not the columns of format 3 ({e})") from None
    if len(sources) != samples:
        raise ShardError(f"{where}: meta sources cover {len(sources)} sequences, expected {samples}")
    return [{"id": i, "source": s, "line": line, "group": g} for i, s, line, g in zip(ids, sources, lines, groups)]


def _member(sample: dict, where: str) -> bytes:
    value = sample.get(CHUNK_MEMBER, sample.get("." + CHUNK_MEMBER))
    if value is None:
        raise ShardError(f"{where}: chunk {sample.get('__key__')} has no {CHUNK_MEMBER} member")
    return value.getvalue() if hasattr(value, "getvalue") else value


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
            f"({OLD_FORMATS.get(found, 'unknown')})"
            f". Rebuild it (prep is deterministic; use the options recorded under 'settings'): "
            f"helm-scale prep {inputs} -o {dataset_dir} --overwrite")
    return manifest


def shard_urls(dataset_dir, split: str) -> list[str]:
    """Absolute shard paths of one split, in order, as the manifest lists them."""
    manifest = read_manifest(dataset_dir)
    return [str(Path(dataset_dir) / s["path"]) for s in manifest["splits"][split]["shards"]]
