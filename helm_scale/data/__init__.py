"""Streaming loader: deterministic, data-parallel-aware, exactly resumable batches.

    from helm_scale.data import LoaderConfig, build_loader
    loader = build_loader(LoaderConfig(dataset_dir, objective="clm", pack=True), dp_rank, dp_size)
    for batch in loader: ...               # the rest of the current epoch
    ckpt["loader"] = loader.state_dict()   # ... later: loader.load_state_dict(ckpt["loader"])

See loader.py for the rank / step contract, order.py for the global order and
batches.py for the batch tensors.
"""
from .batches import BATCH_KEYS, IGNORE_INDEX, MaskingSpec, block_attention_mask
from .loader import LoaderConfig, ResumableLoader, build_loader
from .order import EpochOrder, RowPlan

__all__ = ["BATCH_KEYS", "IGNORE_INDEX", "EpochOrder", "LoaderConfig", "MaskingSpec",
           "ResumableLoader", "RowPlan", "block_attention_mask", "build_loader"]
