"""Backend name -> engine class: the one place that knows which engines exist.

The name is ParallelConfig.backend and what a checkpoint records in its layout, so a
checkpoint finds its engine class without an engine (export). Classes are imported on
first use: DeepSpeed only when chosen, and reading a checkpoint needs no megatron-core.
A third backend is one line here and one module beside engine.py.

    engine_class(backend) -> type[Engine]
    build_engine(model, optim_cfg, cfg, state) -> Engine
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from helm_scale.parallel.config import OptimizerConfig, ParallelConfig
    from helm_scale.parallel.engine import Engine
    from helm_scale.parallel.state import ParallelState

_ENGINES = {
    "ddp": ("helm_scale.parallel.ddp_engine", "DDPEngine"),
    "deepspeed": ("helm_scale.parallel.deepspeed_engine", "DeepSpeedEngine"),
}
BACKENDS = tuple(_ENGINES)


def engine_class(backend: str) -> type[Engine]:
    if backend not in _ENGINES:
        raise ValueError(f"unknown parallel backend {backend!r}; known: {', '.join(BACKENDS)}")
    module, name = _ENGINES[backend]
    return getattr(importlib.import_module(module), name)


def build_engine(model: nn.Module, optim_cfg: OptimizerConfig, cfg: ParallelConfig,
                 state: ParallelState) -> Engine:
    """Wrap a model built after init_parallel(cfg) in the backend cfg names."""
    if state.tp_size != cfg.tensor_parallel:
        raise ValueError(f"state has TP {state.tp_size} but the config asks for {cfg.tensor_parallel}")
    if getattr(model, "sequence_parallel", False) != cfg.sequence_parallel:
        raise ValueError("the model's sequence_parallel differs from ParallelConfig.sequence_parallel")
    if cfg.compile:  # first: the checkpoint then recomputes the compiled block
        from helm_scale.parallel.compiling import apply_compile
        apply_compile(model)
    if cfg.activation_checkpointing:
        from helm_scale.parallel.recompute import apply_activation_checkpointing
        apply_activation_checkpointing(model)
    return engine_class(cfg.backend)(model, optim_cfg, cfg, state)
