"""Record policy: which of a batch of raw sequences are kept, and why the others are not.

Every record comes out either kept (its tokens and an 8-byte content hash) or rejected
with one named reason. The work is vectorised over the whole batch: the tokenizer
(``Vocabulary.encode_batch``) normalises and encodes every record at once, the checks
below are NumPy passes over its columns, and only the content hash runs once per kept
record (in C, through hashlib).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from helm_scale.codon import START_CODON, STOP_CODONS, Vocabulary

__all__ = ["REJECT_REASONS", "BatchOutcome", "RecordPolicy", "content_hashes", "process_batch"]

# Reasons a record is dropped, in the order they are checked.
REJECT_REASONS = (
    "empty_sequence", "invalid_characters", "not_multiple_of_3", "ambiguous_bases",
    "no_start_codon", "no_stop_codon", "internal_stop", "too_short", "too_long",
    "missing_group_key",
)
KEPT = -1


@dataclass(frozen=True)
class RecordPolicy:
    frame: str = "orf"            # "orf": ATG ... stop, in frame; "trim": drop trailing bases
    min_codons: int = 10
    max_codons: int | None = None
    max_ambiguous_codons: int = 0  # codons with IUPAC codes become <unk>; more -> rejected
    require_group: bool = False

    def __post_init__(self):
        if self.frame not in ("orf", "trim"):
            raise ValueError(f"frame must be 'orf' or 'trim', not {self.frame!r}")
        if self.min_codons < 1 or (self.max_codons is not None and self.max_codons < self.min_codons):
            raise ValueError("need 1 <= min_codons <= max_codons")
        if self.max_ambiguous_codons < 0:
            raise ValueError("max_ambiguous_codons must be >= 0")


@dataclass(frozen=True)
class BatchOutcome:
    """Per record ``reason`` (index into REJECT_REASONS, or KEPT); the kept records'
    tokens concatenated in input order, with their codon counts and content hashes."""

    reason: np.ndarray   # int8 [records]
    tokens: np.ndarray   # token dtype, kept records only
    lengths: np.ndarray  # int64 [kept]
    digests: np.ndarray  # uint64 [kept]


def content_hashes(tokens: np.ndarray, lengths: np.ndarray, salt: bytes) -> np.ndarray:
    """8-byte blake2b of each sequence's token bytes: dedup's key, and the split's when
    splitting by sequence (so the salt is the split seed). One C call per sequence."""
    view, ends = memoryview(tokens.tobytes()), np.cumsum(lengths) * tokens.itemsize
    b2 = hashlib.blake2b
    digests = b"".join([b2(view[a:b], digest_size=8, salt=salt).digest()
                        for a, b in zip((ends - lengths * tokens.itemsize).tolist(), ends.tolist())])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _stop_ids(vocab: Vocabulary) -> list[int]:
    return [vocab.index[c] for c in STOP_CODONS]


def _is_stop(tokens: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """Bool per token. bytes.translate for uint8 tokens: ~5x a NumPy fancy index."""
    if tokens.dtype != np.uint8:
        return np.isin(tokens, _stop_ids(vocab))
    table = bytearray(256)
    for i in _stop_ids(vocab):
        table[i] = 1
    return np.frombuffer(tokens.tobytes().translate(bytes(table)), dtype=bool)


def process_batch(data: bytes, starts: np.ndarray, ends: np.ndarray, has_group: np.ndarray | None,
                  policy: RecordPolicy, vocab: Vocabulary, salt: bytes) -> BatchOutcome:
    """Raw sequences ``data[starts[i]:ends[i]]`` -> what the policy makes of each."""
    batch = vocab.encode_batch(data, starts, ends)
    codons, offsets = batch.codons, batch.offsets
    reason = np.full(len(batch), KEPT, dtype=np.int8)

    def mark(condition: np.ndarray, name: str) -> None:  # the first failed check names it
        reason[(reason == KEPT) & condition] = REJECT_REASONS.index(name)

    has = codons > 0
    # Stops are few (about one per record): find them, then count them per record.
    stops = np.flatnonzero(_is_stop(batch.tokens, vocab))
    n_stops = np.bincount(np.searchsorted(offsets[1:], stops, side="right"), minlength=len(batch))
    last_is_stop = first_is_start = np.zeros(len(batch), dtype=bool)
    if len(batch.tokens):
        last_is_stop = has & np.isin(batch.tokens[np.maximum(offsets[1:] - 1, 0)], _stop_ids(vocab))
        first_is_start = has & (batch.tokens[np.minimum(offsets[:-1], len(batch.tokens) - 1)]
                                == vocab.index[START_CODON])

    mark(batch.bases == 0, "empty_sequence")
    mark(batch.invalid, "invalid_characters")
    if policy.frame == "orf":
        mark(batch.bases % 3 != 0, "not_multiple_of_3")
    mark(batch.ambiguous > policy.max_ambiguous_codons, "ambiguous_bases")
    if policy.frame == "orf":
        mark(has & ~first_is_start, "no_start_codon")
        mark(has & ~last_is_stop, "no_stop_codon")
    mark(n_stops[:len(batch)] - last_is_stop > 0, "internal_stop")
    mark(codons < policy.min_codons, "too_short")
    if policy.max_codons is not None:
        mark(codons > policy.max_codons, "too_long")
    if policy.require_group:
        mark(~has_group if has_group is not None else np.ones(len(batch), dtype=bool), "missing_group_key")

    kept = reason == KEPT
    tokens = batch.tokens if kept.all() else batch.tokens[np.repeat(kept, codons)]
    lengths = codons[kept]
    return BatchOutcome(reason, tokens, lengths, content_hashes(tokens, lengths, salt))
