"""Nucleotide sequences in and out of evaluation: FASTA files, prepared shards, codons.

    read_sequences(path, split="test", limit=None) -> list[str]   FASTA(.gz/.zst) or a shard dir
    read_acgt(path, split="test") -> (sequences of A/C/G/T only, how many others were dropped)
    read_fasta(path) -> list[tuple[str, str]]                     (id, normalised sequence)
    write_fasta(path, records)                                    records: [(id, seq)] or [seq]
    codons_of(seq) -> list[str]       in-frame codons from the first base, trailing bases dropped
    is_acgt(seq) -> bool

Sequences are normalised as ``prep`` does it (upper case, U -> T, gaps and whitespace
removed). Only read_acgt filters by content; other callers decide what to do with N and friends.
"""
from __future__ import annotations

import re
from pathlib import Path

_ACGT = re.compile(r"^[ACGT]*$")


class EvalInputError(ValueError):
    """Bad input to an evaluation command: the CLI prints it and exits with code 2."""


def is_acgt(seq: str) -> bool:
    return bool(_ACGT.match(seq))


def codons_of(seq: str) -> list[str]:
    """Non-overlapping codons read from the first base; a trailing partial codon is dropped."""
    return [seq[i:i + 3] for i in range(0, len(seq) - len(seq) % 3, 3)]


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """(id, sequence) of every record of a FASTA file (plain, .gz or .zst)."""
    from data_prep.policy import normalise
    from data_prep.readers import InputError, InputSpec, read_records

    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    try:
        return [(r.record_id, normalise(r.sequence).decode("ascii", errors="replace"))
                for r in read_records(path, InputSpec())]
    except (InputError, ValueError) as e:
        raise EvalInputError(str(e)) from None


def read_split(dataset_dir: str | Path, split: str) -> list[str]:
    """The sequences of one split of a prepared dataset, in manifest order (codons only)."""
    from helm_scale.codon import Vocabulary
    from helm_scale.data.reader import SplitReader, check_manifest
    from helm_scale.shard_format import read_manifest

    try:
        manifest = read_manifest(dataset_dir)
        vocab = Vocabulary.from_dict(manifest["vocabulary"])
        check_manifest(manifest, split, vocab)
    except (FileNotFoundError, ValueError) as e:
        raise EvalInputError(str(e)) from None
    reader = SplitReader(dataset_dir, split, manifest=manifest)
    try:
        return [vocab.decode(reader.tokens(i).tolist()) for i in range(reader.num_samples)]
    except ValueError as e:  # a shard that does not match its manifest
        raise EvalInputError(str(e)) from None
    finally:
        reader.close()


def read_sequences(path: str | Path, split: str = "test", limit: int | None = None) -> list[str]:
    """Sequences of a FASTA file, or of ``split`` of a prepared dataset directory."""
    path = Path(path)
    if path.is_dir():
        seqs = read_split(path, split)
    else:
        seqs = [s for _, s in read_fasta(path)]
    if not seqs:
        raise EvalInputError(f"{path}: no sequences")
    return seqs[:limit] if limit is not None else seqs


def read_acgt(path: str | Path, split: str = "test") -> tuple[list[str], int]:
    """read_sequences without the sequences that have bases other than A, C, G, T, and how
    many those were."""
    seqs = read_sequences(path, split)
    kept = [s for s in seqs if is_acgt(s)]
    return kept, len(seqs) - len(kept)


def write_fasta(path: str | Path, records, width: int = 0) -> None:
    """Write records ``[(id, seq)]`` (or bare sequences, named seq_0, seq_1, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, rec in enumerate(records):
        name, seq = (f"seq_{i}", rec) if isinstance(rec, str) else rec
        lines.append(f">{name}")
        lines.extend([seq[j:j + width] for j in range(0, len(seq), width)] if width else [seq])
    path.write_text("\n".join(lines) + "\n")
