"""Streaming loader: deterministic, data-parallel-aware, exactly resumable batches.

    from helm_scale.data import LoaderConfig, build_loader, model_inputs
    loader = build_loader(LoaderConfig.from_data(cfg.data, seed), dp_rank, dp_size)
    for batch in loader:                   # the rest of the current epoch
        logits = model(**model_inputs(batch, pack, mask_padding=objective == "mlm"))
    ckpt["loader"] = loader.state_dict()   # ... later: loader.load_state_dict(ckpt["loader"])

See config.py for a job's data section (DataConfig), loader.py for the rank / step
contract, order.py for the global order and batches.py for the batch tensors.
"""
from helm_scale.data.config import DataConfig

# Everything else imports torch: loaded on first use, so that a training config (which
# needs only DataConfig) loads without it.
_LAZY = {
    "BATCH_KEYS": "batches", "IGNORE_INDEX": "batches", "MaskingSpec": "batches",
    "block_attention_mask": "batches", "model_inputs": "batches", "pad_rows": "batches",
    "LoaderConfig": "loader", "ResumableLoader": "loader", "build_loader": "loader",
    "EpochOrder": "order", "RowPlan": "order",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'helm_scale.data' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"helm_scale.data.{_LAZY[name]}"), name)


__all__ = ["DataConfig"] + list(_LAZY)
