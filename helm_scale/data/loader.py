"""The resumable, data-parallel-aware loader: config, assembly, checkpoint state.

Who builds it. Pass the data-parallel rank and size from your parallel state (e.g.
megatron's ``get_data_parallel_rank()``), never torch.distributed's global rank: tensor-
parallel peers share a dp_rank and so get identical batches by construction. With
pipeline parallelism only the stages that consume inputs need one (the first stage for
input_ids / position_ids / segment_ids, the last for labels / loss_mask, and any stage
that builds the packed attention mask from segment_ids); they read identical batches.

Steps. Step s of an epoch takes global rows [c + s*G, c + (s+1)*G) where c is where the
epoch was entered (0, or the resume point) and G = micro_batch_size x dp_size; rank r
takes the r-th block of micro_batch_size rows. The epoch's last incomplete global batch
is dropped, so every rank yields the same number of batches whatever the shard, rank and
worker counts: no collective can wait on a rank that ran dry.

Workers. The DataLoader is map-style over steps: worker w builds steps w, w + W, ...
and torch returns them in step order, so 0, 1 or 2 workers give the same stream. A
worker hands a batch over as one compact NumPy block (batches.CompactLayout), widened
to the int64 tensors of the batch dict in the main process.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import weakref
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from helm_scale.codon import Vocabulary
from helm_scale.shard_format import read_manifest

from .batches import Collator, MaskingSpec, unpack_batch
from .config import DataConfig
from .order import EpochOrder, RowPlan
from .reader import SplitReader, check_manifest

STATE_VERSION = 1
_DATA = DataConfig()  # a job's data section: its defaults are the loader's (one source)


@dataclass(frozen=True)
class LoaderConfig:
    """Build it from a training job's data section with :meth:`from_data`; the settings it
    shares with DataConfig (helm_scale.data.config) mean and default the same there."""

    dataset_dir: str
    split: str = "train"
    objective: str = _DATA.objective
    seq_len: int = _DATA.seq_len
    micro_batch_size: int = _DATA.micro_batch_size
    seed: int = 0                       # a job's: parallel.seed
    shuffle: bool = True                # False: manifest order (evaluation)
    shuffle_window: int = _DATA.shuffle_window
    pack: bool = _DATA.pack
    length_bucket: int = _DATA.length_bucket  # runs of similar length (see order.EpochOrder)
    pad_to_multiple_of: int = _DATA.pad_to_multiple_of
    mask_prob: float = _DATA.mask_prob
    mask_replace_ratios: tuple[float, float, float] = _DATA.mask_replace_ratios
    num_workers: int = _DATA.num_workers
    prefetch_factor: int = 4            # batches in flight per worker
    pin_memory: bool | str = "auto"     # "auto": when CUDA is available
    # Decompressed chunks (~1 MiB each) kept per worker. None: enough for the two shuffle
    # windows a global batch can straddle, so each chunk is decompressed once per window.
    cache_chunks: int | None = None
    # How workers start: None keeps the process's default (fork on Linux, but spawn inside
    # processes that torch.multiprocessing.spawn made, where each worker re-imports torch:
    # seconds). "fork" is cheap; "forkserver" is the safe choice if fork troubles you.
    worker_start_method: str | None = None
    vocabulary: Vocabulary = field(default_factory=Vocabulary.default)

    def __post_init__(self):
        DataConfig(**{name: getattr(self, name) for name in _shared_fields()})  # a job's rules
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        MaskingSpec(self.mask_prob, tuple(self.mask_replace_ratios))  # validates

    @classmethod
    def from_data(cls, data: DataConfig, seed: int, split: str = "train", **changes) -> "LoaderConfig":
        """The loader of a job's data section (every field of both; the job's seed is
        ``parallel.seed``), with ``changes`` to any field on top."""
        shared = {name: getattr(data, name) for name in _shared_fields()}
        shared["mask_replace_ratios"] = tuple(shared["mask_replace_ratios"])  # YAML gives a list
        return cls(**{**shared, "split": split, "seed": seed, **changes})

    def for_evaluation(self, split: str) -> "LoaderConfig":
        """The same batches of ``split`` in manifest order (no shuffle, no length buckets),
        read in the main process: what the trainer's and the intrinsic evaluation read."""
        return replace(self, split=split, shuffle=False, length_bucket=0, num_workers=0)

    def order_settings(self, dataset_id: str) -> dict:
        """What fixes the global row order: a resumed run must agree on all of it."""
        return {"dataset": dataset_id, "split": self.split, "seed": self.seed,
                "shuffle": self.shuffle, "shuffle_window": self.shuffle_window,
                "pack": self.pack, "seq_len": self.seq_len if self.pack else None,
                "length_bucket": self.length_bucket}


@functools.cache
def _shared_fields() -> tuple[str, ...]:
    """The settings of both LoaderConfig and DataConfig: a job's data section sets them."""
    ours = {f.name for f in fields(LoaderConfig)}
    return tuple(f.name for f in fields(DataConfig) if f.name in ours)


class _MicroBatches(Dataset):
    """Map-style: key (epoch, first row of the global batch) -> this rank's micro-batch."""

    def __init__(self, cfg: LoaderConfig, reader: SplitReader, dp_rank: int,
                 codon_lengths: np.ndarray | None):
        self.cfg, self.reader, self.dp_rank = cfg, reader, dp_rank
        self.codon_lengths = codon_lengths
        self.collator = Collator(cfg.vocabulary, cfg.seq_len, cfg.objective, cfg.seed,
                                 MaskingSpec(cfg.mask_prob, tuple(cfg.mask_replace_ratios)),
                                 cfg.pad_to_multiple_of, compact=cfg.num_workers > 0)
        self._plans: dict[int, RowPlan] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plans"] = {}  # cheap to recompute; its caches do not pickle
        return state

    def plan(self, epoch: int) -> RowPlan:
        if epoch not in self._plans:
            order = EpochOrder(self.reader.shard_sizes, self.cfg.seed, epoch, self.cfg.shuffle_window,
                               self.cfg.shuffle, self.cfg.length_bucket, self.codon_lengths)
            self._plans = {epoch: RowPlan(order, self.cfg.seq_len, self.codon_lengths if self.cfg.pack else None)}
        return self._plans[epoch]

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, first_row = key
        mb = self.cfg.micro_batch_size
        start = first_row + self.dp_rank * mb
        rows = self.plan(epoch).rows(start, start + mb)
        samples = np.concatenate(rows)
        return self.collator(samples, self.reader.tokens_of(samples), np.fromiter(map(len, rows), np.int64, len(rows)),
                             epoch)


def _as_made(block):
    return block


class _StepKeys(Sampler):
    """Keys of the steps left in the loader's current epoch, fixed when iteration starts."""

    def __init__(self, loader: "ResumableLoader"):
        # A weak reference: a cycle loader -> DataLoader -> sampler -> loader leaves the
        # workers to the cyclic GC, whose finalisation order makes their shutdown wait
        # out torch's 5 s join timeout.
        self._loader = weakref.ref(loader)

    def __iter__(self):
        lo = self._loader()
        stop = lo._rows_consumed + lo.steps_remaining * lo.global_batch_rows
        return iter([(lo.epoch, r) for r in range(lo._rows_consumed, stop, lo.global_batch_rows)])

    def __len__(self) -> int:
        return self._loader().steps_remaining


class ResumableLoader:
    """Iterating yields the rest of the current epoch, then moves to the next epoch.

    ``state_dict()`` after a batch was yielded records it as consumed; a loader given that
    state yields exactly the batches that would have followed, at the same or another
    data-parallel size (and micro-batch size): the state counts rows of the global order.
    """

    def __init__(self, cfg: LoaderConfig, dp_rank: int, dp_size: int, dataset: _MicroBatches,
                 dataset_id: str):
        self.cfg, self.dp_rank, self.dp_size = cfg, dp_rank, dp_size
        self.global_batch_rows = cfg.micro_batch_size * dp_size
        self._dataset, self._dataset_id = dataset, dataset_id
        self.epoch, self._rows_consumed = 0, 0
        workers = cfg.num_workers
        # pinned memory needs CUDA (torch.empty(pin_memory=True) fails without it)
        self._pin = torch.cuda.is_available() and (cfg.pin_memory == "auto" or bool(cfg.pin_memory))
        self._dataloader = DataLoader(dataset, batch_size=None, sampler=_StepKeys(self),
                                      # blocks as made: a worker's compact array is pickled
                                      # through its pipe (see batches.CompactLayout)
                                      collate_fn=_as_made,
                                      num_workers=workers, pin_memory=self._pin,
                                      prefetch_factor=cfg.prefetch_factor if workers else None,
                                      persistent_workers=workers > 0,
                                      # Its own generator: the DataLoader draws a worker seed per
                                      # iterator, which must not move the trainer's global RNG
                                      # (dropout would then differ after a resume).
                                      generator=torch.Generator().manual_seed(cfg.seed),
                                      multiprocessing_context=cfg.worker_start_method if workers else None)
        if self.steps_in_epoch(0) == 0:
            raise ValueError(f"split {cfg.split!r} has {dataset.plan(0).num_rows} rows, fewer than "
                             f"one global batch of {self.global_batch_rows}")

    def rows_in_epoch(self, epoch: int) -> int:
        return self._dataset.plan(epoch).num_rows

    def steps_in_epoch(self, epoch: int) -> int:
        """Steps of a whole epoch at this DP size (packed row counts vary by epoch)."""
        return self.rows_in_epoch(epoch) // self.global_batch_rows

    @property
    def steps_per_epoch(self) -> int:
        return self.steps_in_epoch(self.epoch)

    @property
    def steps_remaining(self) -> int:
        return (self.rows_in_epoch(self.epoch) - self._rows_consumed) // self.global_batch_rows

    def __len__(self) -> int:
        return self.steps_remaining

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._rows_consumed and self.steps_remaining == 0:  # resumed exactly at an epoch's end
            self.epoch, self._rows_consumed = self.epoch + 1, 0
        epoch = self.epoch
        for block in self._dataloader:
            self._rows_consumed += self.global_batch_rows
            yield unpack_batch(block, self._pin)
        if self.epoch == epoch:
            self.epoch, self._rows_consumed = epoch + 1, 0

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "rows_consumed": self._rows_consumed,
                "order": self.cfg.order_settings(self._dataset_id),
                "dp_size": self.dp_size, "micro_batch_size": self.cfg.micro_batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')}, expected {STATE_VERSION}")
        ours = self.cfg.order_settings(self._dataset_id)
        theirs = {"length_bucket": 0, **state["order"]}  # states from before length buckets
        differ = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
        if differ:
            raise ValueError("cannot resume: the checkpoint's sample order was made with other "
                             f"settings (checkpoint, now): {differ}")
        epoch, rows = int(state["epoch"]), int(state["rows_consumed"])
        if not 0 <= rows <= self.rows_in_epoch(epoch):
            raise ValueError(f"checkpoint consumed {rows} rows of epoch {epoch}, which has "
                             f"{self.rows_in_epoch(epoch)}")
        self.epoch, self._rows_consumed = epoch, rows


def window_chunks(chunk_samples: np.ndarray, window: int) -> int:
    """Chunks two consecutive shuffle windows can touch, bounded by the split's chunks.

    A window is ``window`` consecutive positions of the shard-permuted order, so it
    covers whole chunks plus a part at each end, and one more part per shard boundary it
    crosses; counting with the small chunks (the 10th percentile: last chunks of shards
    are short) keeps the bound safe for uneven ones.
    """
    small = max(1.0, float(np.percentile(chunk_samples, 10)))
    return int(min(len(chunk_samples), 2 * (math.ceil(window / small) + 3)))


def dataset_id(manifest: dict, split: str) -> str:
    """Identity of a split's content: the shard checksums, in order."""
    shas = [s["sha256"] for s in manifest["splits"][split]["shards"]]
    return hashlib.sha256(json.dumps(shas).encode()).hexdigest()[:16]


def build_loader(cfg: LoaderConfig, dp_rank: int = 0, dp_size: int = 1) -> ResumableLoader:
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"need 0 <= dp_rank < dp_size, got {dp_rank}, {dp_size}")
    manifest = read_manifest(cfg.dataset_dir)
    check_manifest(manifest, cfg.split, cfg.vocabulary)
    reader = SplitReader(Path(cfg.dataset_dir), cfg.split, manifest=manifest)
    reader.cache_chunks = cfg.cache_chunks or window_chunks(reader.chunk_samples, cfg.shuffle_window)
    lengths = reader.codon_lengths() if cfg.pack or cfg.length_bucket else None
    return ResumableLoader(cfg, dp_rank, dp_size, _MicroBatches(cfg, reader, dp_rank, lengths),
                           dataset_id(manifest, cfg.split))
