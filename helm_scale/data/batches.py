"""Rows of samples -> the tensors a model step takes, for causal and masked LM.

Every batch is a dict of ``[micro_batch, L]`` tensors, L = seq_len, or with
``pad_to_multiple_of`` k > 0 the batch's longest row rounded up to a multiple of k (at
most seq_len): the columns past every row's end would be padding only.

    input_ids     int64  tokens (<cls> codons <eos> per sequence, then <pad>)
    labels        int64  the target of the prediction made AT each position, -100 where
                         there is none. CLM: already shifted (labels[t] = input_ids[t+1]
                         within one sequence): do not shift again. MLM: the original
                         token at masked positions.
    loss_mask     bool   labels != -100; never true on padding or across sequences
    position_ids  int64  0, 1, 2, ... restarting at every sequence; 0 on padding
    segment_ids   int64  1, 2, ... per sequence within a row, 0 on padding: attention
                         may only join tokens with the same non-zero segment id
                         (see :func:`block_attention_mask`)
    sample_ids    int64  the global sample index (key in the split) of each token, -1 on
                         padding: for tracing data and checking coverage

A sequence longer than ``seq_len`` is cut to ``<cls>`` + its first ``seq_len - 1``
codons with no ``<eos>``, so the model is never told a cut sequence has ended.

:func:`model_inputs` turns a batch into a model's keyword arguments (for the trainer and
evaluation alike); :func:`pad_rows` makes a batch of this format from rows built outside
the loader (evaluation's raw sequences).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from helm_scale.codon import Vocabulary

IGNORE_INDEX = -100
BATCH_KEYS = ("input_ids", "labels", "loss_mask", "position_ids", "segment_ids", "sample_ids")
_MASK_SELECT, _MASK_REPLACE, _MASK_RANDOM_TOKEN = 11, 12, 13
_STACKED = ("input_ids", "labels", "position_ids", "segment_ids", "sample_ids")


def unpack_batch(block: torch.Tensor | np.ndarray, pin: bool = False) -> dict[str, torch.Tensor]:
    """The batch dict of a collated block, plus loss_mask; pinned if the block is or ``pin``.

    A block is ``[5, B, L]`` int64 (the fields stacked: the dict holds views), or, from a
    worker, a compact uint8 array (:class:`CompactLayout`, widened here)."""
    if isinstance(block, np.ndarray):
        small, segments, samples = CompactLayout.of(block).fields(block)
        wide = torch.empty((len(_STACKED), len(block), small.shape[2]), dtype=torch.int64, pin_memory=pin)
        out = wide.numpy()
        out[:4] = small
        out[4] = np.take_along_axis(samples, out[3], axis=1)  # segment 0 (padding) -> -1
        block = wide
    batch = dict(zip(_STACKED, block.unbind(0)))
    # NumPy, not a torch op: torch runs even this compare on its intra-op thread pool, whose
    # hand-off costs milliseconds a batch when the cores are busy (measured: 10x on a loaded
    # 2-core machine), and the main process is where a loader's time counts.
    loss_mask = torch.from_numpy(batch["labels"].numpy() != IGNORE_INDEX)
    # Made here, after the DataLoader pinned the block: pin it too, or its host-to-device
    # copy would be the one synchronous transfer of the step.
    batch["loss_mask"] = loss_mask.pin_memory() if block.is_pinned() else loss_mask
    return {k: batch[k] for k in BATCH_KEYS}


@dataclass(frozen=True)
class CompactLayout:
    """A worker's batch as ``[B, 16 + 4 L s + 8 (K + 1)]`` uint8: per row a 16-byte header
    (item size s, L, K as int32), input_ids, labels, position_ids and segment_ids as s-byte
    ints, then the row's sample id per segment number 0..K (-1 for 0, padding). Sample ids
    per segment instead of per token, and 2-byte fields, make it 5x smaller than the int64
    block; sent as a NumPy array it is pickled through the worker's pipe, which at ~0.5 MB
    measured 1.8x faster than torch's shared-memory hand-off (a socket and an fd per tensor)."""

    small: np.dtype
    length: int
    segments: int  # K: the most sequences in one row

    @classmethod
    def of(cls, block: np.ndarray) -> "CompactLayout":
        s, length, k = block[0, :12].view(np.int32).tolist()
        return cls(np.dtype(f"<i{s}"), length, k)

    @property
    def row_bytes(self) -> int:
        return 16 + 4 * self.length * self.small.itemsize + 8 * (self.segments + 1)

    def fields(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views: the four small fields ``[4, B, L]`` (a strided view), segment ids
        ``[B, L]``, and the per-segment sample ids ``[B, K + 1]``."""
        width = self.length * self.small.itemsize
        small = block[:, 16:16 + 4 * width].view(self.small).reshape(len(block), 4, self.length)
        return small.transpose(1, 0, 2), small[:, 3], block[:, 16 + 4 * width:].view(np.int64)

    def make(self, rows: int) -> np.ndarray:
        block = np.empty((rows, self.row_bytes), dtype=np.uint8)
        block[:, :12].view(np.int32)[:] = (self.small.itemsize, self.length, self.segments)
        block[:, 12:16] = 0
        return block


@dataclass(frozen=True)
class MaskingSpec:
    """HELM masks 15% of non-special tokens, all to <mask>: ratios (1, 0, 0). BERT's
    80/10/10 (mask, random codon, unchanged) is ``(0.8, 0.1, 0.1)``."""

    prob: float = 0.15
    replace_ratios: tuple[float, float, float] = (1.0, 0.0, 0.0)

    def __post_init__(self):
        if not 0.0 < self.prob < 1.0:
            raise ValueError("mask probability must be in (0, 1)")
        if len(self.replace_ratios) != 3 or min(self.replace_ratios) < 0 \
                or abs(sum(self.replace_ratios) - 1.0) > 1e-6:
            raise ValueError("mask replace ratios (mask, random, keep) must be >= 0 and sum to 1")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def token_uniforms(seed: int, epoch: int, stream: int, sample_ids: np.ndarray,
                   positions: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers keyed by (seed, epoch, stream, sample, position in sample).

    Hand-written counter-based hashing rather than a seeded generator per sample: one
    vectorised pass per batch, and each token's draw depends only on its own key, so the
    masks are identical whatever the ranks, workers, packing or resume point.
    """
    with np.errstate(over="ignore"):
        head = np.array(0x9E3779B97F4A7C15, dtype=np.uint64)
        for part in (seed, epoch, stream):  # chained, so (1, 0) and (0, 1) differ
            head = _mix(head + np.uint64(part))
        key = _mix(_mix(head + sample_ids.astype(np.uint64)) + positions.astype(np.uint64))
    return (key >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def with_specials(codons: np.ndarray, seq_len: int, vocab: Vocabulary) -> np.ndarray:
    """``<cls> codons <eos>`` as int64, cut to ``seq_len`` (a cut one has no <eos>)."""
    n = len(codons)
    if n + 2 <= seq_len:
        out = np.empty(n + 2, dtype=np.int64)
        out[1:-1], out[-1] = codons, vocab.eos_id
    else:
        out = np.empty(seq_len, dtype=np.int64)
        out[1:] = codons[:seq_len - 1]
    out[0] = vocab.cls_id
    return out


class Collator:
    """Builds one micro-batch from rows of samples (each sample's codons, no specials)."""

    def __init__(self, vocab: Vocabulary, seq_len: int, objective: str, seed: int,
                 masking: MaskingSpec = MaskingSpec(), pad_to_multiple_of: int = 0,
                 compact: bool = False):
        if objective not in ("clm", "mlm"):
            raise ValueError(f"objective must be 'clm' or 'mlm', not {objective!r}")
        if pad_to_multiple_of < 0:
            raise ValueError("pad_to_multiple_of must be >= 0 (0: every row seq_len long)")
        self.vocab, self.seq_len, self.objective, self.seed = vocab, seq_len, objective, seed
        self.masking, self.pad_to_multiple_of = masking, pad_to_multiple_of
        # compact: the block a worker sends (CompactLayout), 2-byte fields where they fit
        self.small = (np.int16 if max(seq_len, len(vocab)) < 1 << 15 else np.int32) if compact else None
        self._is_special = np.zeros(len(vocab), dtype=bool)
        self._is_special[list(vocab.special_ids)] = True

    def stream(self, codons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Every sample's ``<cls> codons <eos>`` (cut to seq_len, as :func:`with_specials`)
        concatenated as int64, and each one's length: NumPy over the whole batch."""
        n_codons = np.fromiter(map(len, codons), dtype=np.int64, count=len(codons))
        flat = np.concatenate(codons) if codons else np.zeros(0, np.uint8)
        kept = np.minimum(n_codons, self.seq_len - 1)
        lengths = np.minimum(n_codons + 2, self.seq_len)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        if (kept < n_codons).any():  # drop the codons past seq_len - 1 of the cut ones
            within = np.arange(len(flat)) - np.repeat(np.cumsum(n_codons) - n_codons, n_codons)
            flat = flat[within < np.repeat(kept, n_codons)]
        uncut = n_codons + 2 <= self.seq_len  # room for <eos> (n = seq_len - 1 keeps every codon, no <eos>)
        out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
        is_codon = np.ones(len(out), dtype=bool)
        is_codon[starts] = False
        eos = (starts + kept + 1)[uncut]
        is_codon[eos] = False
        out[is_codon] = flat
        out[starts] = self.vocab.cls_id
        out[eos] = self.vocab.eos_id
        return out, lengths

    def __call__(self, samples: np.ndarray, codons: list[np.ndarray], row_sizes: np.ndarray,
                 epoch: int) -> torch.Tensor | np.ndarray:
        """The batch as one block (a ``[5, B, L]`` int64 tensor, or a compact array);
        :func:`unpack_batch` makes the dict. Row r holds the next ``row_sizes[r]`` of
        ``samples`` in order."""
        # Vectorised over the whole batch: the rows' real tokens, in row-major order, are
        # exactly the samples' token streams concatenated, so each field is one boolean-
        # mask assignment into a padded buffer (no per-row or per-sample NumPy calls).
        tokens, lengths = self.stream(codons)
        row_sizes = np.asarray(row_sizes, dtype=np.int64)
        b, length = len(row_sizes), self.seq_len
        row_first = np.cumsum(row_sizes) - row_sizes
        row_fill = np.add.reduceat(lengths, row_first) if len(lengths) else np.zeros(b, np.int64)
        longest = int(row_fill.max(initial=0))
        if longest > length:
            raise ValueError(f"a row of {longest} tokens exceeds seq_len {length}")
        if self.pad_to_multiple_of:
            k = self.pad_to_multiple_of
            length = min(length, max(-(-longest // k) * k, k))
        real = np.arange(length) < row_fill[:, None]
        seg_ends = np.cumsum(lengths)
        positions = np.arange(len(tokens)) - np.repeat(seg_ends - lengths, lengths)
        sample_of = np.repeat(np.asarray(samples, dtype=np.int64), lengths)
        if self.objective == "clm":
            labels = np.empty_like(tokens)
            labels[:-1] = tokens[1:]
            labels[seg_ends - 1] = IGNORE_INDEX  # last token: next is another sequence
        else:
            tokens, labels = self._mask(tokens, sample_of, positions, epoch)

        # One buffer for all fields: a worker hands the main process one shared-memory
        # block per batch instead of five (measured: the per-tensor transfer dominated).
        seg_number = np.arange(len(lengths)) - np.repeat(row_first, row_sizes) + 1
        if self.small is None:
            block = np.empty((len(_STACKED), b, length), dtype=np.int64)
            fields = list(block)
        else:
            layout = CompactLayout(np.dtype(self.small), length, int(row_sizes.max(initial=0)))
            block = layout.make(b)
            fields, _, table = layout.fields(block)
            fields = list(fields)
            table.fill(-1)
            table[np.repeat(np.arange(b), row_sizes), seg_number] = samples
        for buffer, fill, values in zip(fields, (self.vocab.pad_id, IGNORE_INDEX, 0, 0, -1), (
                tokens, labels, positions, np.repeat(seg_number, lengths), sample_of)):
            buffer.fill(fill)
            buffer[real] = values
        return block if self.small is not None else torch.from_numpy(block)

    def _mask(self, ids, samples, positions, epoch):
        """MLM over the real tokens only: each draw is keyed by (sample, position), so it
        does not matter which tokens are drawn for; padding is special, never masked."""
        select = token_uniforms(self.seed, epoch, _MASK_SELECT, samples, positions) < self.masking.prob
        select &= ~self._is_special[ids]
        labels = np.where(select, ids, IGNORE_INDEX)
        p_mask, p_random, _ = self.masking.replace_ratios
        how = token_uniforms(self.seed, epoch, _MASK_REPLACE, samples, positions)
        masked = ids.copy()
        masked[select & (how < p_mask)] = self.vocab.mask_id
        randomise = select & (how >= p_mask) & (how < p_mask + p_random)
        if randomise.any():
            pick = token_uniforms(self.seed, epoch, _MASK_RANDOM_TOKEN, samples, positions)
            codon = np.minimum((pick * 64).astype(np.int64), 63)
            masked[randomise] = self.vocab.codon_lookup[codon[randomise]]
        return masked, labels


def pad_rows(rows: list[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of one sequence each (e.g. :func:`with_specials`') as an unpacked batch:
    input_ids padded on the right with ``pad_id`` to the longest row, segment_ids 1 on
    tokens and 0 on padding."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    real = np.arange(max(int(lengths.max(initial=0)), 1))[None] < lengths[:, None]
    ids = np.full(real.shape, pad_id, dtype=np.int64)
    ids[real] = np.concatenate(rows) if rows else []
    return {"input_ids": torch.from_numpy(ids), "segment_ids": torch.from_numpy(real.astype(np.int64))}


def model_inputs(batch: dict, pack: bool = False, *, mask_padding: bool) -> dict:
    """A batch's keyword arguments for a model (helm_scale.models.base.LanguageModel):
    input_ids, position_ids (None where the batch has none: the model counts 0, 1, ...)
    and only what the attention needs. Packed rows: their segment_ids. Unpacked rows with
    ``mask_padding``: a padding_mask (segment 0). Causal rows padded on the right need no
    mask (attention never reaches the right padding, and SDPA keeps its flash kernels), so
    the trainer passes ``mask_padding`` for bidirectional (MLM) models only. A batch without
    segment ids (full rows of one sequence each, as benchmarks make) gets no mask."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch.get("position_ids")}
    if pack:
        inputs["segment_ids"] = batch["segment_ids"]
    elif mask_padding and batch.get("segment_ids") is not None:
        inputs["padding_mask"] = batch["segment_ids"] == 0
    return inputs


def block_attention_mask(segment_ids: torch.Tensor, causal: bool) -> torch.Tensor:
    """``[B, 1, L, L]`` bool, True where query i may attend to key j: same non-zero
    segment (and j <= i if causal). Padding queries attend nowhere; a kernel that needs
    one key per row can allow the diagonal. Memory is O(L^2) per row: fine for HELM's
    444 tokens; longer rows want a varlen kernel fed from segment_ids instead."""
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] > 0)
    if causal:
        length = segment_ids.shape[1]
        same &= torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    return same[:, None]
