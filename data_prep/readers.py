"""Input discovery and streaming readers for every corpus format ``prep`` accepts.

Readers stream :class:`RecordBatch` es (columns of consecutive records; FASTA is cut
into records by NumPy passes over large decompressed blocks, no Python per line) from a
binary stream, so memory stays flat however large a file is. Anything that makes the rest of a file unreadable
(truncated compression, binary content, a sequence before the first FASTA header, a
missing CSV column) raises :class:`InputError` naming the file and line; problems of a
single record are left for the record policy to count.
"""
from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import zstandard

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
FORMATS = {".fa": "fasta", ".fasta": "fasta", ".fna": "fasta", ".ffn": "fasta",
           ".csv": "csv", ".tsv": "tsv", ".txt": "lines", ".seq": "lines"}


class InputError(Exception):
    """A structural problem that stops preparation: names the file and line."""

    def __init__(self, source: str, line: int | None, message: str):
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class RawRecord:
    record_id: str
    line: int           # 1-based line where the record starts
    sequence: bytes     # as read, not yet normalised
    group: str | None   # group key for the split, if the input names one


@dataclass(frozen=True)
class InputSpec:
    """How to read tabular inputs; FASTA and line files need none of it."""

    column: str | None = None        # sequence column of CSV / TSV / OAS files
    id_column: str | None = None     # record id column (default: the line number)
    group_column: str | None = None  # group key column (gene id, clone id)
    group_regex: str | None = None   # group key from a FASTA header: first capture group


def discover(paths: list[str]) -> list[Path]:
    """Expand files, directories (recursively) and globs into a sorted, unique file list."""
    found: set[Path] = set()
    for p in paths:
        matches = [Path(m) for m in sorted(glob.glob(p, recursive=True))] or [Path(p)]
        for m in matches:
            if m.is_dir():
                found.update(f for f in m.rglob("*") if f.is_file() and detect_format(f, strict=False))
            elif m.is_file():
                found.add(m)
            else:
                raise InputError(p, None, "no such file, directory or glob match")
    if not found:
        raise InputError(", ".join(paths), None, "no input files found")
    return sorted(found)


def _suffixes(path: Path) -> tuple[str | None, str]:
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    fmt_suffix = suffixes[-2] if compression and len(suffixes) > 1 else (suffixes[-1] if suffixes and not compression else "")
    return compression, fmt_suffix


def detect_format(path: Path, strict: bool = True) -> str | None:
    _, fmt_suffix = _suffixes(Path(path))
    fmt = FORMATS.get(fmt_suffix)
    if fmt is None and strict:
        raise InputError(str(path), None, f"unknown format (known endings: {', '.join(FORMATS)}, "
                         f"optionally followed by {', '.join(COMPRESSIONS)})")
    return fmt


try:  # ISA-L's gzip (optional: pip install "helm-scale[fast]"): inflates ~3x faster than
    # zlib, which on .fa.gz inputs was ~25% of a prep with one worker
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _GzipError
except ImportError:  # pragma: no cover - depends on the environment
    _gzip, _GzipError = gzip, zlib.error
_DECOMPRESSION_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, _GzipError, zstandard.ZstdError)


def _binary_error(source: str, line: int, block: bytes) -> InputError:
    bad = next(i for i, b in enumerate(block) if b >= 128 or b == 0)
    return InputError(source, line + block.count(b"\n", 0, bad), "binary or non-text content")


class _LineCounter:
    """Wraps a binary line iterator to know the current line and to turn decompression
    failures into InputErrors that name the file and line."""

    def __init__(self, stream, source: str):
        self.stream, self.source, self.line = stream, source, 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for raw in self.stream:
                self.line += 1
                if not raw.isascii() or b"\x00" in raw:
                    raise _binary_error(self.source, self.line, raw)
                yield raw
        except _DECOMPRESSION_ERRORS as e:
            raise InputError(self.source, self.line + 1,
                             f"corrupt or truncated compressed data ({e})") from e


def _blocks(stream, source: str, size: int, line_now) -> Iterator[bytes]:
    """Decompressed blocks: FASTA parsing on whole blocks (NumPy passes over the bytes)
    costs a fraction of a per-line Python loop. ``line_now()`` tells the line the next
    block starts at (asked only to name one in an error: counting costs a pass)."""
    try:
        while block := stream.read(size):
            if not block.isascii() or b"\x00" in block:
                raise _binary_error(source, line_now(), block)
            yield block
    except _DECOMPRESSION_ERRORS as e:
        raise InputError(source, line_now(), f"corrupt or truncated compressed data ({e})") from e


class TrackedFile(io.RawIOBase):
    """The raw input file: counts bytes read (for progress) and hashes them (for the
    manifest) as decompression pulls them, so each input is read exactly once."""

    def __init__(self, path: Path):
        self._f, self.sha, self.bytes_read = open(path, "rb"), hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._f.readinto(buffer)
        self.sha.update(memoryview(buffer)[:n])
        self.bytes_read += n
        return n

    def hexdigest(self) -> str:
        """sha256 of the whole file, reading whatever decompression left unread.

        The decompressing wrappers close this object when they finish; the file itself
        stays open until here so that the tail (a gzip trailer, say) is hashed too."""
        while block := self._f.read(1 << 20):
            self.sha.update(block)
            self.bytes_read += len(block)
        self._f.close()
        return self.sha.hexdigest()


def _decompressed(path: Path, raw: TrackedFile):
    compression, _ = _suffixes(path)
    if compression == "gzip":
        return _gzip.GzipFile(fileobj=io.BufferedReader(raw), mode="rb")
    if compression == "zstd":
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=False))
    return io.BufferedReader(raw)


@dataclass
class RecordBatch:
    """Consecutive records of one input as columns: the raw sequence of record i is
    ``data[starts[i]:ends[i]]`` (not yet normalised; FASTA line breaks included)."""

    data: bytes
    starts: np.ndarray   # int64
    ends: np.ndarray     # int64
    ids: list[str]
    lines: np.ndarray    # int64, 1-based line where each record starts
    groups: list | None  # group key per record (None where absent); None: no keys at all

    def __len__(self) -> int:
        return len(self.ids)

    def sequence(self, i: int) -> bytes:
        return self.data[self.starts[i]:self.ends[i]]

    @classmethod
    def of(cls, records: list[RawRecord]) -> "RecordBatch":
        lengths = np.fromiter((len(r.sequence) for r in records), dtype=np.int64, count=len(records))
        ends = np.cumsum(lengths)
        groups = [r.group for r in records]
        return cls(b"".join(r.sequence for r in records), ends - lengths, ends,
                   [r.record_id for r in records],
                   np.fromiter((r.line for r in records), dtype=np.int64, count=len(records)),
                   groups if any(g is not None for g in groups) else None)


def read_batches(path: Path, spec: InputSpec, raw: TrackedFile | None = None,
                 batch_bytes: int = 4 << 20) -> Iterator[RecordBatch]:
    """Records of one file, streamed in batches of about ``batch_bytes`` of input text.
    Raises InputError on structural problems."""
    source, fmt = str(path), detect_format(path)
    if path.stat().st_size == 0:
        raise InputError(source, None, "file is empty (a failed download?); remove it or fix it")
    with _decompressed(path, raw or TrackedFile(path)) as stream:
        if fmt == "fasta":
            yield from _fasta(stream, batch_bytes, source, spec)
            return
        records = (_plain_lines(_LineCounter(stream, source)) if fmt == "lines" else
                   _table(_LineCounter(stream, source), spec, delimiter="\t" if fmt == "tsv" else ","))
        batch, size = [], 0
        for record in records:
            batch.append(record)
            size += len(record.sequence)
            if size >= batch_bytes:
                yield RecordBatch.of(batch)
                batch, size = [], 0
        if batch:
            yield RecordBatch.of(batch)


def read_records(path: Path, spec: InputSpec, raw: TrackedFile | None = None) -> Iterator[RawRecord]:
    """Records of one file, one at a time (see :func:`read_batches`)."""
    for batch in read_batches(path, spec, raw):
        for i in range(len(batch)):
            yield RawRecord(batch.ids[i], int(batch.lines[i]), batch.sequence(i),
                            batch.groups[i] if batch.groups is not None else None)


def _fasta(stream, block_bytes: int, source: str, spec: InputSpec) -> Iterator[RecordBatch]:
    """Cuts the stream at the last record start of each block and parses what precedes
    it as one batch; a record longer than a block simply waits for more blocks."""
    group_re = re.compile(spec.group_regex) if spec.group_regex else None
    parts, start_line, first, any_data = [], 1, True, False
    line_now = lambda: start_line + sum(p.count(b"\n") for p in parts)  # noqa: E731
    for block in _blocks(stream, source, block_bytes, line_now):
        any_data = True
        cut = block.rfind(b"\n>")  # index in block of the newline before the last header
        if cut < 0:
            if not (parts and parts[-1].endswith(b"\n") and block.startswith(b">")):
                parts.append(block)
                continue
            cut = -1  # that newline ended the previous block
        text = b"".join([*parts, memoryview(block)[:cut + 1]])
        batch, newlines = _fasta_batch(text, start_line, first, source, group_re)
        if batch:
            yield batch
        first, start_line = False, start_line + newlines
        parts = [block[cut + 1:]]
    if any(parts):
        batch, _ = _fasta_batch(b"".join(parts), start_line, first, source, group_re)
        if batch:
            yield batch
    elif not any_data:
        raise InputError(source, None, "no content after decompression")


# What str.split() splits ASCII text on, besides the newline.
_HEADER_SPACE = b" \t\r\x0b\x0c\x1c\x1d\x1e\x1f"


def _fasta_batch(text: bytes, line: int, first: bool, source: str,
                 group_re) -> tuple[RecordBatch | None, int]:
    """Whole records (``text`` starts at a header) as columns, and the newlines in
    ``text``. Record boundaries come from NumPy passes over the bytes."""
    lead_lines = 0
    if first and not text.startswith(b">"):
        end = text.find(b"\n>")
        lead = text if end < 0 else text[:end + 1]
        for i, row in enumerate(lead.split(b"\n")):
            if row.strip() and not row.startswith(b";"):
                raise InputError(source, line + i, "sequence before the first '>' header")
        lead_lines = lead.count(b"\n")
        line, text = line + lead_lines, text[len(lead):]
    if not text:
        return None, lead_lines
    a = np.frombuffer(text, dtype=np.uint8)
    newlines = np.flatnonzero(a == 10)
    marks = np.flatnonzero(a == 62)
    heads = marks[(marks == 0) | (a[marks - 1] == 10)]  # '>' opening a line
    head_ends = np.append(newlines, len(text))[np.searchsorted(newlines, heads)]
    lines = line + np.searchsorted(newlines, heads)
    headers = [text[h + 1:e] for h, e in zip(heads.tolist(), head_ends.tolist())]
    joined = b"\n".join(headers)
    if (head_ends - heads > 1).all() and len(joined.translate(None, _HEADER_SPACE)) == len(joined):
        ids = joined.decode().split("\n")  # the usual case: each header is one word
    else:
        words = [h.decode().split(None, 1) for h in headers]
        ids = [w[0] if w else f"{source}:{n}" for w, n in zip(words, lines.tolist())]
    groups = None
    if group_re is not None:
        groups = [_group(group_re, h.strip().decode()) for h in headers]
    batch = RecordBatch(text, np.minimum(head_ends + 1, len(text)), np.append(heads[1:], len(text)),
                        ids, lines, groups)
    return batch, lead_lines + len(newlines)


def _group(group_re, header: str) -> str | None:
    m = group_re.search(header)
    return None if m is None else (m.group(1) if m.groups() else m.group(0))


def _plain_lines(lines: _LineCounter) -> Iterator[RawRecord]:
    for raw in lines:
        if raw.strip():
            yield RawRecord(f"line{lines.line}", lines.line, raw, None)


def _table(lines: _LineCounter, spec: InputSpec, delimiter: str) -> Iterator[RawRecord]:
    text = (raw.decode() for raw in lines)
    first = next(text, None)
    if first is None:
        raise InputError(lines.source, None, "no content after decompression")
    if _is_oas_metadata(first):  # OAS data units open with one line of JSON metadata
        first = next(text, None)
        if first is None:
            raise InputError(lines.source, 2, "OAS metadata line but no header row")
    header_line = lines.line
    reader = csv.reader(_chain(first, text), delimiter=delimiter)
    header = next(reader)
    if spec.column is None:
        raise InputError(lines.source, header_line, f"tabular input needs --column; columns are {header}")
    index = {}
    for role, name in (("sequence", spec.column), ("id", spec.id_column), ("group", spec.group_column)):
        if name is not None:
            if name not in header:
                raise InputError(lines.source, header_line,
                                 f"no {role} column named {name!r}; columns are {header}")
            index[role] = header.index(name)
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise InputError(lines.source, lines.line,
                             f"row has {len(row)} fields, the header has {len(header)}")
        rid = row[index["id"]] if "id" in index else f"row{lines.line}"
        group = row[index["group"]] if "group" in index else None
        yield RawRecord(rid, lines.line, row[index["sequence"]].encode(), group)


def _chain(first: str, rest):
    yield first
    yield from rest


def _is_oas_metadata(line: str) -> bool:
    s = line.strip()
    if s.startswith('"') and s.endswith('"'):
        s = s[1:-1].replace('""', '"')
    if not s.startswith("{"):
        return False
    try:
        return isinstance(json.loads(s), dict)
    except json.JSONDecodeError:
        return False

