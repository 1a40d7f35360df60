"""Per-rank state: every random generator of the rank (as tensors and plain values that
torch's weights-only loading accepts; NumPy's state array travels as a tensor) and the
rank's own extras (e.g. its unlogged metric sums)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch


def _model_parallel_tracker():
    from megatron.core import (
        tensor_parallel,  # imported on use: exports need no megatron
    )
    return tensor_parallel.get_cuda_rng_tracker()


def capture() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "model_parallel": _model_parallel_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    _model_parallel_tracker().set_states(state["model_parallel"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_file(directory: Path, rank: int) -> Path:
    return directory / "rng" / f"rank-{rank:05d}.pt"


def save(directory: Path, rank: int, extra: dict | None = None) -> None:
    path = rank_file(directory, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"rng": capture(), "extra": extra or {}}, path)


def load(directory: Path, rank: int) -> dict:
    """Restore this rank's generators; returns its extras."""
    state = torch.load(rank_file(directory, rank), weights_only=True)
    restore(state["rng"])
    return state["extra"]
