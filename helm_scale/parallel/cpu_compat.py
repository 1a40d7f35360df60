"""Run megatron-core's tensor-parallel layers on a CPU (gloo) machine.

Product code because the demo trains on CPU; applied by init_parallel only when the
device is the CPU (rank 0 says so once in the log), never at import and never on GPU. Each patch stands in for a CUDA call
that megatron 0.16 makes unconditionally:
  - torch.cuda.current_device -> the CPU device (buffers of sequence-parallel all-gathers
    and reduce-scatters are allocated on it);
  - torch.cuda.synchronize -> no-op (parallel_state and dist_checkpointing call it);
  - megatron's model-parallel RNG tracker -> CpuRNGStatesTracker, which forks the CPU
    generator (megatron's tracker only knows CUDA generator states);
  - megatron's CUDA generator get / set (its activation checkpoint saves and restores
    them) -> an empty state and a no-op: there is no CUDA generator, and the CPU one and
    the tracker's streams are saved by megatron already.
"""
from __future__ import annotations

import contextlib

import torch
from megatron.core.tensor_parallel import random as mp_random

_applied = False


class CpuRNGStatesTracker(mp_random.CudaRNGStatesTracker):
    """megatron's named RNG streams, kept as CPU generator states."""

    def add(self, name, seed):
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists")
        if name in self.states_:
            raise ValueError(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(saved)

    @contextlib.contextmanager
    def fork(self, name=mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise KeyError(f"rng state {name} is not added: call model_parallel_cuda_manual_seed")
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)


def apply_cpu_patches() -> bool:
    """Idempotent. Only call on a CPU-only run (init_parallel does). True if this call
    applied them (the first in the process)."""
    global _applied
    if _applied:
        return False
    if torch.cuda.is_available():
        raise RuntimeError("megatron CPU patches must not be applied where CUDA is available")
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None
    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.empty(0, dtype=torch.uint8)
    mp_random._set_cuda_rng_state = lambda *args, **kwargs: None
    _applied = True
    return True
