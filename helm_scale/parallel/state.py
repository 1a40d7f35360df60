"""Process groups, device, seeding and a clean exit.

init_parallel(cfg) -> ParallelState: initialise (or reuse) the default process group,
build megatron-core's TP x DP groups on it, apply the CPU patches if the device is the
CPU (said once, by rank 0), and seed every generator. shutdown(code) ends a rank without the gloo exit crash.
"""
from __future__ import annotations

import datetime
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from helm_scale.parallel.config import ParallelConfig


@dataclass(frozen=True)
class ParallelState:
    rank: int
    world_size: int
    dp_rank: int
    dp_size: int
    tp_rank: int
    tp_size: int
    tp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def loss_group(self) -> dist.ProcessGroup | None:
        """The group argument of helm_scale.losses: the TP group, or None at TP = 1."""
        return self.tp_group if self.tp_size > 1 else None


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def set_seed(seed: int) -> None:
    """Same seed on every rank: identical CPU-initialised weights at any TP x DP layout.
    megatron's model-parallel stream (seed + 2718 + tp_rank) drives dropout on TP-sharded
    activations; the default stream is shared, as in megatron."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def init_parallel(cfg: ParallelConfig) -> ParallelState:
    """Build the TP x DP layout on the default group (initialised from torchrun's
    environment if the caller has not done it). Re-initialises megatron's groups if they
    exist, so one process group can host several layouts one after the other."""
    device = _device()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=cfg.timeout_s))
    if device.type == "cuda":
        # megatron's TP layers overlap their all-reduce with the weight-gradient GEMM only if
        # kernels run in launch order; it must be set before the CUDA context exists.
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
        torch.cuda.set_device(device)
    else:
        from helm_scale.parallel.cpu_compat import apply_cpu_patches
        if apply_cpu_patches() and dist.get_rank() == 0:
            print("no CUDA device: megatron-core's CUDA calls (current_device, synchronize, RNG "
                  "tracker) are patched to run on the CPU (helm_scale/parallel/cpu_compat.py)", flush=True)
    world = dist.get_world_size()
    if world % cfg.tensor_parallel:
        raise ValueError(f"tensor_parallel {cfg.tensor_parallel} does not divide world size {world}")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    # megatron's groups (TP; DP, which carries DDP's gradient all-reduce) have their own
    # timeout, 30 minutes by default: a hung peer would stall them that long.
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=cfg.tensor_parallel,
                                             distributed_timeout_minutes=cfg.timeout_s / 60)
    set_seed(cfg.seed)
    return ParallelState(
        rank=dist.get_rank(), world_size=world,
        dp_rank=parallel_state.get_data_parallel_rank(), dp_size=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        dp_group=parallel_state.get_data_parallel_group(), device=device)


def shutdown(code: int = 0) -> None:
    """Leave the process: barrier, flush, os._exit. With gloo (and ZeRO 2/3) the interpreter's
    own shutdown sometimes aborts in a gloo worker thread after all work is done; skipping
    finalisation avoids it (see shared/CPU_DISTRIBUTED.md). atexit hooks do not run: save
    anything they would have saved first."""
    try:
        if dist.is_initialized():
            dist.barrier()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
