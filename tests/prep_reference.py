"""An independent, deliberately naive re-statement of prep's record policy and shard
reading, used as the oracle in tests: per-character Python, no NumPy, no shared code
beyond the vocabulary."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import zstandard
from webdataset.tariterators import group_by_keys, tar_file_expander

from helm_scale.codon import STOP_CODONS, Vocabulary
from helm_scale.shard_format import read_manifest

V = Vocabulary.default()


def expected_outcome(raw: str, frame="orf", min_codons=10, max_codons=None, max_ambiguous=0):
    """(reason or None, codon tokens) for one raw sequence string."""
    s = "".join(c for c in raw.upper() if c not in " \t\r\n-.").replace("U", "T")
    if not s:
        return "empty_sequence", None
    if any(c not in "ACGTNRYSWKMBDHV" for c in s):
        return "invalid_characters", None
    if frame == "orf" and len(s) % 3:
        return "not_multiple_of_3", None
    codons = [s[i:i + 3] for i in range(0, len(s) - len(s) % 3, 3)]
    ambiguous = [any(c not in "ACGT" for c in codon) for codon in codons]
    if sum(ambiguous) > max_ambiguous:
        return "ambiguous_bases", None
    if frame == "orf" and codons[0] != "ATG":
        return "no_start_codon", None
    if frame == "orf" and codons[-1] not in STOP_CODONS:
        return "no_stop_codon", None
    if any(c in STOP_CODONS for c in codons[:-1]):
        return "internal_stop", None
    if len(codons) < min_codons:
        return "too_short", None
    if max_codons is not None and len(codons) > max_codons:
        return "too_long", None
    return None, [V.unk_id if amb else V.index[c] for c, amb in zip(codons, ambiguous)]


def read_fasta(path) -> list[tuple[str, str]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    records, header, seq = [], None, []
    with opener(path, "rt") as f:
        for line in f:
            if line.startswith(">"):
                if header is not None:
                    records.append((header, "".join(seq)))
                header, seq = line[1:].split()[0], []
            else:
                seq.append(line.strip())
    if header is not None:
        records.append((header, "".join(seq)))
    return records


def _column(raw: bytes, dtype: str, n: int) -> list[int]:
    """A format-3 column read naively: n little-endian unsigned ints stored plane by plane."""
    size = int(dtype[-1])
    return [sum(raw[k * n + i] << (8 * k) for k in range(size)) for i in range(n)]


def _running(zigzags: list[int]) -> list[int]:
    out, value = [], 0
    for z in zigzags:
        value += (z >> 1) if z % 2 == 0 else -(z >> 1) - 1
        out.append(value)
    return out


def _strings(name: str, tables: dict, cols: dict) -> list[str]:
    prefixes = [tables[name][i] for i in _running(cols[f"{name}_prefix"])]
    numbers = _running(cols[f"{name}_number"])
    return [p + (str(num).zfill(d) if d else "") for p, num, d in zip(prefixes, numbers, cols[f"{name}_digits"])]


def read_meta(raw: bytes) -> tuple[list[int], list[dict]]:
    """(lengths, metadata) of one decompressed format-3 meta frame, read by hand."""
    size = int.from_bytes(raw[:4], "little")
    header = json.loads(raw[4:4 + size])
    n, at, cols = header["samples"], 4 + size, {}
    for name, dtype, nbytes in header["columns"]:
        cols[name] = _column(raw[at:at + nbytes], dtype, n)
        at += nbytes
    assert at == len(raw)
    sources = [path for path, k in header["source"] for _ in range(k)]
    groups = [None] * n
    if "group" in header["tables"]:
        missing = cols.get("group_missing", [0] * n)
        groups = [None if m else g for g, m in zip(_strings("group", header["tables"], cols), missing)]
    meta = [{"id": i, "source": s, "line": line, "group": g}
            for i, s, line, g in zip(_strings("id", header["tables"], cols), sources, _running(cols["line"]), groups)]
    return cols["lengths"], meta


def read_dataset(root) -> dict[str, list[tuple[list[int], dict]]]:
    """Every split's samples in index order: (tokens, metadata), from the tar members of
    format 3 read by hand (a chunk: its meta frame's columns, then its tokens frame)."""
    manifest, d = read_manifest(root), zstandard.ZstdDecompressor()
    out = {}
    for name, split in manifest["splits"].items():
        rows = []
        for shard in split["shards"]:
            with open(Path(root) / shard["path"], "rb") as stream:
                for chunk in group_by_keys(tar_file_expander([{"stream": stream, "url": shard["path"]}])):
                    assert int(chunk["__key__"]) == len(rows)
                    assert set(chunk) - {"__key__", "__url__"} == {"chunk.zst"}
                    frames = d.decompressobj()  # two frames: meta, then tokens
                    lengths, meta = read_meta(frames.decompress(chunk["chunk.zst"]))
                    tokens = list(d.decompress(frames.unused_data))
                    start = 0
                    for n, m in zip(lengths, meta):
                        rows.append((tokens[start:start + n], m))
                        start += n
                    assert start == len(tokens)
        out[name] = rows
    return out
