"""The data section of a training job (``data:`` in its YAML). No torch here, so a job's
configuration loads anywhere (helm_scale.train_config); ``LoaderConfig.from_data`` builds
the loader from it, and its values are the loader's defaults too: one source of them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    dataset_dir: str = ""
    objective: str = "clm"            # "clm" | "mlm"
    seq_len: int = 444                # HELM's maximum, specials included
    micro_batch_size: int = 8
    pack: bool = False                # several sequences per row
    pad_to_multiple_of: int = 0       # k > 0: batches end at their longest row, rounded up to k
    # k > 0 (unpacked rows only): within each shuffle window, runs of k rows of similar
    # length in random order, so that pad_to_multiple_of cuts more padding; k = the global
    # batch (micro_batch_size x DP) makes every batch one run. 0: off.
    length_bucket: int = 0
    shuffle_window: int = 1 << 16     # samples per shuffle window: the shuffle buffer
    mask_prob: float = 0.15
    mask_replace_ratios: tuple[float, float, float] = (1.0, 0.0, 0.0)  # (0.8, 0.1, 0.1): BERT
    num_workers: int = 1
    eval_split: str = "val"
    global_batch_size: int | None = None  # if set, must equal micro x accumulation x DP

    def __post_init__(self):  # the loader's settings are checked by these rules too
        if self.objective not in ("clm", "mlm"):
            raise ValueError(f"objective must be 'clm' or 'mlm', got {self.objective!r}")
        if self.seq_len < 3 or self.micro_batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"need seq_len >= 3, micro_batch_size >= 1, num_workers >= 0; got "
                             f"{self.seq_len}, {self.micro_batch_size}, {self.num_workers}")
        if self.pad_to_multiple_of < 0:
            raise ValueError("pad_to_multiple_of must be >= 0 (0: every batch seq_len wide)")
        if self.length_bucket < 0 or (self.length_bucket and self.pack):
            raise ValueError("length_bucket must be >= 0, and 0 with pack: true (packing fills rows instead)")
