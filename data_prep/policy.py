"""Record policy: normalise, validate and tokenise a batch of raw sequences.

Every record comes out either kept (with its token bytes and an 8-byte content hash) or
rejected with one named reason. The work is vectorised over the whole batch with NumPy
(one pass of table look-ups over the concatenated bases), which is what makes ``prep``
fast: a per-codon Python loop costs about 100 ns per codon.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from helm_scale.codon import START_CODON, STOP_CODONS, Vocabulary

# Reasons a record is dropped, in the order they are checked.
REJECT_REASONS = (
    "empty_sequence", "invalid_characters", "not_multiple_of_3", "ambiguous_bases",
    "no_start_codon", "no_stop_codon", "internal_stop", "too_short", "too_long",
    "missing_group_key",
)
IUPAC_AMBIGUOUS = b"NRYSWKMBDHV"
_DELETE = b" \t\r\n-."  # whitespace and alignment gaps
_U_TO_T = bytes.maketrans(b"U", b"T")
# byte -> 0..3 for A C G T, 4 for an IUPAC ambiguity code, 5 for anything else
_BASE_CODE = np.full(256, 5, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _BASE_CODE[_b] = _i
_BASE_CODE[list(IUPAC_AMBIGUOUS)] = 4


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
class Outcome:
    """Result for one record: ``reason`` is None when kept."""

    reason: str | None
    tokens: bytes = b""
    digest: int = 0          # 8-byte content hash of the tokens (duplicate detection)
    normalised: bytes = b""  # kept only for rejected records, for the rejects sample


def normalise(seq: bytes) -> bytes:
    """Upper case, U -> T, gaps and whitespace removed."""
    return seq.upper().translate(_U_TO_T, _DELETE)


def content_hash(tokens: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(tokens, digest_size=8).digest(), "little")


def process_batch(sequences: list[bytes], groups: list, policy: RecordPolicy,
                  vocab: Vocabulary) -> list[Outcome]:
    seqs = [normalise(s) for s in sequences]
    n = len(seqs)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
    reason: list[str | None] = [None] * n
    for i in np.flatnonzero(lengths == 0):
        reason[i] = "empty_sequence"

    codes = _BASE_CODE[np.frombuffer(b"".join(seqs), dtype=np.uint8)]
    starts = np.cumsum(lengths) - lengths
    _mark(reason, _segment_sums(codes == 5, starts, lengths) > 0, "invalid_characters")
    n_codons = lengths // 3
    if policy.frame == "orf":
        _mark(reason, lengths % 3 != 0, "not_multiple_of_3")

    # Tokenise every codon of every record at once; codon k of record r starts at
    # starts[r] + 3k. The codon code of every base position comes from three shifted
    # views of the bases (contiguous passes), then one gather picks the in-frame ones.
    # Records already rejected contribute no codons.
    alive = np.array([r is None for r in reason], dtype=bool)
    take = np.where(alive, n_codons, 0)
    first = np.repeat(starts, take) + 3 * (np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take))
    if len(codes) >= 3:
        at = 16 * codes[:-2] + 4 * codes[1:-1] + codes[2:]  # <= 105: fits uint8
        is_ambiguous = codes == 4
        ambiguous = (is_ambiguous[:-2] | is_ambiguous[1:-1] | is_ambiguous[2:])[first]
        codon = at[first]
    else:
        ambiguous, codon = np.zeros(0, dtype=bool), np.zeros(0, dtype=np.uint8)
    tokens = vocab.codon_lookup[codon & 63].astype(vocab.token_dtype)
    tokens[ambiguous] = vocab.unk_id
    stop_ids = [vocab.index[c] for c in STOP_CODONS]
    is_stop = np.isin(tokens, stop_ids) & ~ambiguous
    tok_starts = np.cumsum(take) - take
    n_ambiguous = _segment_sums(ambiguous, tok_starts, take)
    n_stops = _segment_sums(is_stop, tok_starts, take)
    last_is_stop = np.zeros(n, dtype=bool)
    has = take > 0
    last_is_stop[has] = is_stop[(tok_starts + take - 1)[has]]
    first_is_start = np.zeros(n, dtype=bool)
    first_is_start[has] = tokens[tok_starts[has]] == vocab.index[START_CODON]

    _mark(reason, n_ambiguous > policy.max_ambiguous_codons, "ambiguous_bases")
    if policy.frame == "orf":
        _mark(reason, has & ~first_is_start, "no_start_codon")
        _mark(reason, has & ~last_is_stop, "no_stop_codon")
    _mark(reason, n_stops - last_is_stop > 0, "internal_stop")
    _mark(reason, take < policy.min_codons, "too_short")
    if policy.max_codons is not None:
        _mark(reason, take > policy.max_codons, "too_long")
    if policy.require_group:
        _mark(reason, np.array([not g for g in groups], dtype=bool), "missing_group_key")

    out = []
    for i in range(n):
        if reason[i] is None:
            tb = tokens[tok_starts[i]: tok_starts[i] + take[i]].tobytes()
            out.append(Outcome(None, tb, content_hash(tb)))
        else:
            out.append(Outcome(reason[i], normalised=seqs[i]))
    return out


def _segment_sums(flags: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum of flags over each segment [start, start + length); empty segments give 0."""
    if not flags.any():  # the usual case (clean input): skip a cumsum over every base
        return np.zeros(len(starts), dtype=np.int64)
    csum = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return csum[starts + lengths] - csum[starts]


def _mark(reason: list, condition: np.ndarray, name: str) -> None:
    for i in np.flatnonzero(condition):
        if reason[i] is None:
            reason[i] = name
