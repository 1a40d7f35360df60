"""Each engine's state through its library's own checkpointing, loaded without unsafe pickles.

DDP engines (with or without megatron TP): torch.distributed.checkpoint (DCP). Every
TP-sharded parameter and its AdamW moments are saved as a DTensor sharded along megatron's
partition_dim over the TP group, everything else as a replicated tensor; DCP writes each
piece once and reshards on load, so a checkpoint resumes at any DP size and any TP size.
Only tensors go in (optimizer hyper-parameters come from the config), so DCP never
pickles a value; its .metadata file (a pickle) is read by a restricted unpickler.

DeepSpeed engines: DeepSpeed's save_checkpoint / load_checkpoint, and its universal
checkpoint conversion to resume ZeRO at another DP size. DeepSpeed calls torch.load with
weights_only=False; while it loads, torch.load is forced to weights_only=True with an
allow-list of the three plain DeepSpeed classes its files contain.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

MODEL_DIR, DEEPSPEED_DIR, DEEPSPEED_TAG, UNIVERSAL_DIR = "model", "deepspeed", "state", "universal"


# ---- safe reading -----------------------------------------------------------------------

class _MetadataUnpickler(pickle.Unpickler):
    """DCP's .metadata holds only its own dataclasses, torch sizes, dtypes and a path."""

    def find_class(self, module, name):
        allowed = (module == "torch.distributed.checkpoint.metadata"
                   or (module, name) in {("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                                         ("torch", "Size"), ("torch.serialization", "_get_layout"),
                                         ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
                                         ("collections", "OrderedDict")}
                   or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
            metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
        if getattr(metadata, "storage_meta", None) is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def weights_only_torch_load():
    """Make every torch.load inside (DeepSpeed's included) weights-only."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            yield
    finally:
        torch.load = original


# ---- DDP engines: DCP -------------------------------------------------------------------

def _tp_sharded(module: torch.nn.Module) -> dict[str, int]:
    """Parameter name -> megatron partition dim, for TP-sharded parameters."""
    return {n: p.partition_dim for n, p in module.named_parameters() if getattr(p, "tensor_model_parallel", False)}


def _dcp_state(engine, state) -> dict:
    """{"model": ..., "optim": ...} of local tensors, TP shards wrapped as DTensors."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.distributed.tensor import DeviceMesh, DTensor, Shard

    module = engine.module
    model = dict(module.state_dict())
    # Fresh dicts: the inner ones may be the optimizer's own, which must keep plain tensors.
    optim = {name: dict(entry) for name, entry in get_optimizer_state_dict(module, engine.optimizer)["state"].items()}
    if state.tp_size == 1:
        return {"model": model, "optim": optim}
    mesh = DeviceMesh.from_group(state.tp_group, state.device.type)

    def shard(t: torch.Tensor, dim: int):
        shape = list(t.shape)
        shape[dim] *= state.tp_size
        return DTensor.from_local(t, mesh, [Shard(dim)], run_check=False, shape=torch.Size(shape),
                                  stride=torch.empty(shape, device="meta").stride())

    for name, dim in _tp_sharded(module).items():
        model[name] = shard(model[name], dim)
        for key, value in optim[name].items():
            if value.shape == model[name].to_local().shape:
                optim[name][key] = shard(value, dim)
    return {"model": model, "optim": optim}


def save_dcp(engine, state, directory: Path) -> None:
    dcp.save(_dcp_state(engine, state), checkpoint_id=str(directory / MODEL_DIR))


def load_dcp(engine, state, directory: Path) -> None:
    """Load in place into this layout's shards, whatever layout saved them."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.tensor import DTensor

    target = _dcp_state(engine, state)
    dcp.load(target, storage_reader=SafeFileSystemReader(str(directory / MODEL_DIR)))
    local = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in target["model"].items()}
    engine.module.load_state_dict(local, strict=True)
    full = get_optimizer_state_dict(engine.module, engine.optimizer)
    full["state"] = {name: {k: v.to_local() if isinstance(v, DTensor) else v for k, v in entry.items()}
                     for name, entry in target["optim"].items()}
    set_optimizer_state_dict(engine.module, engine.optimizer, full)


def read_full_weights_dcp(directory: Path) -> dict[str, torch.Tensor]:
    """Full (unsharded) model weights of a DCP checkpoint, in this process alone."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    reader = SafeFileSystemReader(str(directory / MODEL_DIR))
    meta = reader.read_metadata()
    weights = {key.split(".", 1)[1]: torch.empty(m.size, dtype=m.properties.dtype)
               for key, m in meta.state_dict_metadata.items()
               if key.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": weights}, storage_reader=reader, no_dist=True)
    return weights


# ---- DeepSpeed engines --------------------------------------------------------------------

def save_deepspeed(engine, directory: Path) -> None:
    engine.ds_engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False)


def convert_to_universal(directory: Path) -> Path:
    """Rank 0: DeepSpeed's universal checkpoint (layout-free ZeRO state) next to the native one."""
    import argparse

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
    out = directory / UNIVERSAL_DIR
    if not (out / DEEPSPEED_TAG).is_dir():
        args = argparse.Namespace(input_folder=str(directory / DEEPSPEED_DIR / DEEPSPEED_TAG),
                                  output_folder=str(out / DEEPSPEED_TAG), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True, no_strict=False)
        with weights_only_torch_load():
            ds_to_universal(args)
    return out


def load_deepspeed(engine, directory: Path, universal: bool) -> None:
    ds = engine.ds_engine
    root = directory / (UNIVERSAL_DIR if universal else DEEPSPEED_DIR)
    ds._config.load_universal_checkpoint = universal
    with weights_only_torch_load():
        path, _ = ds.load_checkpoint(str(root), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                     load_lr_scheduler_states=False, load_module_strict=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint under {root}")


def read_full_weights_deepspeed(directory: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a DeepSpeed checkpoint (any ZeRO stage), in this process alone."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    with weights_only_torch_load():
        weights = get_fp32_state_dict_from_zero_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG)
    return {k: v.float() for k, v in weights.items()}


# ---- both ---------------------------------------------------------------------------------

def save_engine(engine, state, directory: Path) -> None:
    """Collective: every rank writes its part into ``directory`` (the staging directory)."""
    if engine.ds_engine is not None:
        save_deepspeed(engine, directory)
    else:
        save_dcp(engine, state, directory)
    dist.barrier()
