"""Nucleotide sequences in and out of evaluation: FASTA files, prepared shards, tokens.

    read_sequences(path, split="test", limit=None) -> list[str]   FASTA(.gz/.zst) or a shard dir
    read_acgt(path, split="test") -> (sequences of A/C/G/T only, how many others were dropped)
    read_fasta(path) -> list[tuple[str, str]]                     (id, normalised sequence)
    write_fasta(path, records)                                    records: [(id, seq)] or [seq]
    tokenise(sequences, vocab, max_len) -> Tokenised              the model's input rows

Evaluation reads sequences with the project's one tokenizer (helm_scale.tokenizer), as
``prep`` reads a corpus: normalised (upper case, U -> T, gaps and whitespace removed),
codons in frame from the first base, trailing bases dropped, a codon holding a base other
than A/C/G/T read as <unk>. Only read_acgt filters by content; other callers decide what
to do with N and friends.

Two errors, both bad input (the commands print them and exit 2):
helm_scale.tokenizer.SequenceError for a sequence's content (characters, length in
codons) wherever it came from, and :class:`EvalInputError` for everything else (files,
CSV columns and rows, options, exports).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helm_scale.tokenizer import normalise, read_bases


class EvalInputError(ValueError):
    """Bad input to an evaluation command other than a sequence's content (that is a
    helm_scale.tokenizer.SequenceError): the CLI prints it and exits with code 2."""


@dataclass
class Tokenised:
    ids: list[np.ndarray]  # <cls> codons [<eos>] per sequence (int64), at most max_len
    truncated: int         # sequences cut to max_len
    unknown_codons: int    # codons holding a base other than A/C/G/T, now <unk>


def tokenise(sequences: list[str], vocab, max_len: int) -> Tokenised:
    """Each sequence as a model row: ``<cls> codons <eos>``, cut to ``max_len`` tokens as
    the training batches are (a cut row has no <eos>)."""
    from helm_scale.data.batches import with_specials
    batch = vocab.encode_batch(sequences)
    ids = [with_specials(batch.sequence(i), max_len, vocab) for i in range(len(batch))]
    return Tokenised(ids, int((batch.codons + 2 > max_len).sum()), int((batch.tokens == vocab.unk_id).sum()))


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """(id, sequence) of every record of a FASTA file (plain, .gz or .zst)."""
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
    kept = [s for s, other in zip(seqs, read_bases(seqs).non_acgt) if not other]
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
