"""The project's one tokenizer: raw nucleotide sequences, normalised and read as codons, a
whole batch at a time. Prep, evaluation and the n-gram baselines all read sequences through
it, so a sequence means the same bases and codons everywhere.

    normalise(seq: bytes) -> bytes        upper case, U -> T, gaps and whitespace removed
    read_bases(sequences) -> Bases        every record's normalised bases, as classes
    Bases.codons() / codon_index()        codons read from the first base, trailing bases dropped
    encode(bases, codon_table) -> EncodedBatch   codons -> token ids
    SequenceError                         the one error for bad sequence input

Most callers want ``helm_scale.codon.Vocabulary.encode_batch`` (read_bases, then encode
with the vocabulary's token ids). A bottom module: it imports nothing of ours
(helm_scale.codon builds on it).

How. Bytes are classed by one 256-entry table applied with bytes.translate, CPython's C
loop (a NumPy fancy index costs ~5x more per byte on uint8): A C G T (any case, U read as
T) are 0..3, IUPAC ambiguity codes 4, anything else 5; whitespace and gaps are deleted in
the same pass. Three classes make a base-6 codon code (< 216), and a second 256-entry
table maps it to a token id, so no step runs Python per base or codon.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

BASES = "ACGT"  # classes 0..3, in this order: a codon's index is 16 b0 + 4 b1 + b2
AMBIGUOUS, INVALID = 4, 5  # the classes of an IUPAC code and of a character that is no base
IUPAC_AMBIGUOUS = b"NRYSWKMBDHV"
REMOVED = b" \t\r\n-."  # whitespace and alignment gaps: dropped by normalisation


def _class_table() -> bytes:
    table = bytearray([INVALID]) * 256
    for code, bases in enumerate((b"Aa", b"Cc", b"Gg", b"TtUu")):
        for b in bases:
            table[b] = code
    for b in IUPAC_AMBIGUOUS + IUPAC_AMBIGUOUS.lower():
        table[b] = AMBIGUOUS
    return bytes(table)


_CLASS_OF_BYTE = _class_table()
_NORMALISED = bytes(ord("T") if b in b"Uu" else b - 32 if 97 <= b <= 122 else b for b in range(256))


class SequenceError(ValueError):
    """Bad sequence input: characters that are no base (or not A/C/G/T where only those
    will do), or a length that is not whole codons where whole codons are required.
    Names the record."""


def normalise(seq: bytes) -> bytes:
    """Upper case, U -> T, gaps and whitespace removed (what the tokenizer reads)."""
    return seq.translate(_NORMALISED, REMOVED)


def codon_code(codon: str) -> int:
    """The base-6 code (36 b0 + 6 b1 + b2) under which :func:`encode` looks a codon up."""
    b0, b1, b2 = (BASES.index(c) for c in codon)
    return 36 * b0 + 6 * b1 + b2


def _segment_counts(positions: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of the sorted ``positions`` fall in each segment [ends[i-1], ends[i])."""
    return np.bincount(np.searchsorted(ends, positions, side="right"), minlength=len(ends))[:len(ends)]


@dataclass(frozen=True)
class Bases:
    """Normalised sequences as base classes: record i is ``classes[offsets[i]:offsets[i + 1]]``."""

    classes: bytes        # one class per base (A C G T = 0..3, IUPAC 4, other 5), concatenated
    offsets: np.ndarray   # int64 [n + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n]: bases per record, trailing bases included."""
        return np.diff(self.offsets)

    @property
    def array(self) -> np.ndarray:
        return np.frombuffer(self.classes, dtype=np.uint8)

    def _holding(self, lowest: int) -> np.ndarray:
        """bool [n]: records with a base of class ``lowest`` or above."""
        if all(self.classes.find(bytes([c])) < 0 for c in range(lowest, INVALID + 1)):
            return np.zeros(len(self), dtype=bool)  # the common case: skip the pass
        return _segment_counts(np.flatnonzero(self.array >= lowest), self.offsets[1:]) > 0

    @cached_property
    def invalid(self) -> np.ndarray:
        """bool [n]: holds a character that is neither a base nor an IUPAC code."""
        return self._holding(INVALID)

    @cached_property
    def non_acgt(self) -> np.ndarray:
        """bool [n]: holds anything but A, C, G, T (an IUPAC code or no base)."""
        return self._holding(AMBIGUOUS)

    def check_acgt(self, who: str) -> None:
        """Raise :class:`SequenceError` naming the first record with a base other than
        A/C/G/T, for ``who`` (what takes them only)."""
        bad = np.flatnonzero(self.non_acgt)
        if len(bad):
            raise SequenceError(f"{who}: A/C/G/T only, but {len(bad)} of {len(self)} sequences have "
                                f"other bases (first: #{bad[0]})")

    def codons(self) -> tuple[np.ndarray, np.ndarray]:
        """([m, 3] uint8 classes of every record's codons, read from its first base with
        trailing bases dropped; int64 [n + 1] where each record's codons start)."""
        c, lengths = self.array, self.lengths
        codons = lengths // 3
        trailing = lengths - 3 * codons
        if trailing.any():  # drop trailing bases so that every record's codons line up in threes
            n = int(trailing.sum())
            within = np.arange(n) - np.repeat(np.cumsum(trailing) - trailing, trailing)
            c = np.delete(c, np.repeat(self.offsets[1:] - trailing, trailing) + within)
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(codons, out=offsets[1:])
        return c.reshape(-1, 3), offsets

    def codon_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(int64 [m]: each codon's index in ACGT order, 16 b0 + 4 b1 + b2, or -1 for a
        codon holding another base; its offsets, as :meth:`codons`)."""
        triples, offsets = self.codons()
        t = triples.astype(np.int64)
        index = 16 * t[:, 0] + 4 * t[:, 1] + t[:, 2]
        return np.where((triples < AMBIGUOUS).all(axis=1), index, -1), offsets


def read_bases(sequences: Sequence[str | bytes] | bytes, starts=None, ends=None) -> Bases:
    """Normalise many raw sequences: a list of str / bytes, or one bytes buffer with
    ``starts`` and ``ends`` (int arrays) marking each sequence in it."""
    if starts is None:
        raw = [s.encode("ascii", "replace") if isinstance(s, str) else bytes(s) for s in sequences]
        parts = [s.translate(_CLASS_OF_BYTE, REMOVED) for s in raw]
    else:
        parts = [sequences[a:b].translate(_CLASS_OF_BYTE, REMOVED)
                 for a, b in zip(np.asarray(starts).tolist(), np.asarray(ends).tolist())]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=offsets[1:])
    return Bases(b"".join(parts), offsets)


@dataclass(frozen=True)
class EncodedBatch:
    """Sequence i is ``tokens[offsets[i]:offsets[i + 1]]`` (codon ids, no specials)."""

    tokens: np.ndarray     # token dtype, every record's codons concatenated
    offsets: np.ndarray    # int64 [n + 1]
    bases: np.ndarray      # int64 [n]: normalised length in bases, trailing bases included
    invalid: np.ndarray    # bool [n]: holds a character that is neither a base nor IUPAC
    ambiguous: np.ndarray  # int64 [n]: codons holding an IUPAC code (encoded as <unk>)

    def __len__(self) -> int:
        return len(self.bases)

    @property
    def codons(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def check(self, names: Sequence[str] | None = None, whole_codons: bool = False,
              allow_invalid: bool = False) -> None:
        """Raise :class:`SequenceError` for the first record with a character that is no
        base (unless ``allow_invalid``), or with trailing bases if ``whole_codons``."""
        bad = (np.zeros(len(self), dtype=bool) if allow_invalid else self.invalid.copy())
        if whole_codons:
            bad |= self.bases % 3 != 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = ("a character that is not a base (A C G T U or an IUPAC code)"
                    if self.invalid[i] and not allow_invalid else
                    f"{self.bases[i]} bases, not a multiple of 3")
            name = names[i] if names is not None else f"sequence {i}"
            raise SequenceError(f"{name}: {what}")


def encode(bases: Bases, codon_table: np.ndarray) -> EncodedBatch:
    """Every record's codons as token ids: ``codon_table`` maps a codon's base-6 code
    (:func:`codon_code`) to its id, and any other code (a codon holding an IUPAC code or
    no base) to the unknown token's."""
    triples, offsets = bases.codons()
    code = triples[:, 0] * 36 + triples[:, 1] * 6 + triples[:, 2]  # uint8: at most 215
    if codon_table.dtype == np.uint8:
        tokens = np.frombuffer(code.tobytes().translate(codon_table.tobytes()), dtype=np.uint8)
    else:
        tokens = codon_table[code]
    ambiguous = np.zeros(len(bases), dtype=np.int64)
    if bases.classes.find(bytes([AMBIGUOUS])) >= 0:
        unclear = np.flatnonzero((triples == AMBIGUOUS).any(axis=1))
        ambiguous = _segment_counts(unclear, offsets[1:])
    return EncodedBatch(tokens, offsets, bases.lengths, bases.invalid, ambiguous)
