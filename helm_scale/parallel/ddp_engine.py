"""DDP backend: torch DDP over megatron's data-parallel group (+ megatron TP), its state in
torch.distributed.checkpoint (DCP).

Every TP-sharded parameter and its AdamW moments are saved as a DTensor sharded along
megatron's partition_dim over the TP group, everything else as a replicated tensor; DCP
writes each piece once and reshards on load, so a checkpoint resumes at any DP size and
any TP size. Only tensors go in (optimizer hyper-parameters come from the config), so DCP
never pickles a value; its .metadata file (a pickle) is read by a restricted unpickler.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.nn.parallel import DistributedDataParallel

from helm_scale.parallel.config import OptimizerConfig, ParallelConfig
from helm_scale.parallel.engine import Engine, StepResult
from helm_scale.parallel.optim import build_adamw, build_param_groups, clip_grad_norm_tp

if TYPE_CHECKING:
    from helm_scale.parallel.state import ParallelState

MODEL_DIR = "model"  # the DCP checkpoint inside a checkpoint directory


class DDPEngine(Engine):
    """TP collectives live in the layers. bf16 is autocast (fp32 weights, optimizer and
    gradients), on CUDA only."""

    backend = "ddp"

    def __init__(self, model: nn.Module, optim_cfg: OptimizerConfig, cfg: ParallelConfig,
                 state: ParallelState):
        if cfg.precision == "bf16" and state.device.type != "cuda":
            # megatron's TP linears restore only CUDA autocast in their backward: on CPU the
            # backward would multiply bf16 gradients with fp32 weights and fail.
            raise ValueError("precision='bf16' with backend='ddp' uses CUDA autocast; on CPU "
                             "use backend='deepspeed' (bf16 weights, fp32 master copy)")
        super().__init__(cfg, state)
        self.module = model.to(state.device)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = build_adamw(build_param_groups(self.module, optim_cfg), optim_cfg)
        device_ids = [state.device.index] if state.device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(self.module, device_ids=device_ids, process_group=state.dp_group)

    def __call__(self, *args, **kwargs):
        # DDP decides at forward time whether this backward all-reduces; this flag is what
        # no_sync() toggles, set here because forward and backward are separate calls.
        self.wrapped.require_backward_grad_sync = self.at_boundary
        precision = (torch.autocast(self.state.device.type, dtype=torch.bfloat16)
                     if self.cfg.precision == "bf16" else contextlib.nullcontext())
        with precision:
            return self.wrapped(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        # DDP's all-reduce averages over the DP ranks; times dp_size makes it the sum of the
        # ranks' shares (exact for powers of two). torch's DDP has no sum mode short of a
        # hand-written comm hook, which would also replace its built-in C++ allreduce.
        (loss * self.state.dp_size).backward()
        self.micro_steps += 1

    def step(self) -> StepResult:
        if self.micro_steps == 0 or self.micro_steps % self.cfg.accumulation_steps:
            return StepResult(False, None)
        norm = clip_grad_norm_tp(self.params, self.cfg.grad_clip, self.state.tp_group)
        self.optimizer.step()
        self.zero_grad()
        return StepResult(True, norm)

    # ---- state: DCP (reshards, so any DP and TP size resumes; see the module docstring) ----

    def save(self, directory: Path) -> None:
        dcp.save(self._dcp_state(), checkpoint_id=str(directory / MODEL_DIR))

    def load(self, directory: Path, universal: bool = False) -> None:
        """In place into this layout's shards, whatever layout saved them."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
        from torch.distributed.tensor import DTensor

        target = self._dcp_state()
        dcp.load(target, storage_reader=SafeFileSystemReader(str(directory / MODEL_DIR)))
        local = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in target["model"].items()}
        self.module.load_state_dict(local, strict=True)
        full = get_optimizer_state_dict(self.module, self.optimizer)
        full["state"] = {name: {k: v.to_local() if isinstance(v, DTensor) else v for k, v in entry.items()}
                         for name, entry in target["optim"].items()}
        set_optimizer_state_dict(self.module, self.optimizer, full)

    @classmethod
    def read_full_weights(cls, directory: Path, layout: dict) -> dict[str, torch.Tensor]:
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

    def _dcp_state(self) -> dict:
        """{"model": ..., "optim": ...} of local tensors, TP shards wrapped as DTensors."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        from torch.distributed.tensor import DeviceMesh, DTensor, Shard

        state, module = self.state, self.module
        model = dict(module.state_dict())
        # Fresh dicts: the inner ones may be the optimizer's own, which must keep plain tensors.
        optim = {name: dict(entry) for name, entry in get_optimizer_state_dict(module, self.optimizer)["state"].items()}
        if state.tp_size == 1:
            return {"model": model, "optim": optim}
        mesh = DeviceMesh.from_group(state.tp_group, state.device.type)

        def shard(t: torch.Tensor, dim: int):
            shape = list(t.shape)
            shape[dim] *= state.tp_size
            return DTensor.from_local(t, mesh, [Shard(dim)], run_check=False, shape=torch.Size(shape),
                                      stride=torch.empty(shape, device="meta").stride())

        tp_sharded = {n: p.partition_dim for n, p in module.named_parameters()
                      if getattr(p, "tensor_model_parallel", False)}
        for name, dim in tp_sharded.items():
            model[name] = shard(model[name], dim)
            for key, value in optim[name].items():
                if value.shape == model[name].to_local().shape:
                    optim[name][key] = shard(value, dim)
        return {"model": model, "optim": optim}


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
