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


def read_dataset(root) -> dict[str, list[tuple[list[int], dict]]]:
    """Every split's samples in index order: (tokens, metadata), from the tar members of
    format 2 read by hand (one chunk: tokens, uint32 lengths, columnar metadata)."""
    manifest, d = read_manifest(root), zstandard.ZstdDecompressor()
    out = {}
    for name, split in manifest["splits"].items():
        rows = []
        for shard in split["shards"]:
            with open(Path(root) / shard["path"], "rb") as stream:
                for chunk in group_by_keys(tar_file_expander([{"stream": stream, "url": shard["path"]}])):
                    assert int(chunk["__key__"]) == len(rows)
                    tokens = list(d.decompress(chunk["tokens.zst"]))
                    raw = d.decompress(chunk["lengths.zst"])
                    lengths = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]
                    meta = json.loads(d.decompress(chunk["meta.json.zst"]))
                    sources = [path for path, n in meta["source"] for _ in range(n)]
                    groups = meta["group"] or [None] * len(lengths)
                    lines, line = [], 0
                    for delta in meta["line_delta"]:
                        line += delta
                        lines.append(line)
                    start = 0
                    for k, n in enumerate(lengths):
                        rows.append((tokens[start:start + n], {"id": meta["id"][k], "source": sources[k],
                                                               "line": lines[k], "group": groups[k]}))
                        start += n
                    assert start == len(tokens)
        out[name] = rows
    return out
