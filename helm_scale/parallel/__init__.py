"""Parallelism applied outside the model: process groups, engines, optimizer settings.

  init_parallel(cfg: ParallelConfig) -> ParallelState
  build_engine(model, optim_cfg: OptimizerConfig, cfg: ParallelConfig, state) -> Engine
  engine_class(backend) -> the Engine subclass of a backend name (DDPEngine, DeepSpeedEngine)
  Engine: __call__(...) -> logits_shard, backward(share of the step objective; see engine.py),
          step() -> StepResult(stepped, grad_norm),
          zero_grad(), set_lr(lr), train()/eval(), full_state_dict(),
          save(dir) / load(dir, universal), resume_route(was, now), read_full_weights(dir, layout)
          (its own checkpoint state); attributes module, optimizer (torch), micro_steps
  build_param_groups(model, optim_cfg), clip_grad_norm_tp(params, max_norm, tp_group)
  gather_tp_state(module, tp_group), set_seed(seed), shutdown(code)
  apply_compile(model), apply_activation_checkpointing(model) (build_engine applies them
  when cfg asks, in that order)

The DeepSpeed backend is imported only when chosen. CPU patches for megatron-core
(cpu_compat) are applied by init_parallel on CPU-only runs, never at import.
"""
from helm_scale.parallel.config import OptimizerConfig, ParallelConfig

# Everything else imports torch or megatron-core (seconds): loaded on first use, so that reading a
# training config (which needs only the two dataclasses above) stays fast.
_LAZY = {
    "Engine": "engine", "StepResult": "engine", "DDPEngine": "ddp_engine",
    "build_engine": "backends", "engine_class": "backends",
    "build_adamw": "optim", "build_param_groups": "optim", "clip_grad_norm_tp": "optim",
    "ParallelState": "state", "init_parallel": "state", "set_seed": "state", "shutdown": "state",
    "gather_tp_state": "weights", "apply_activation_checkpointing": "recompute",
    "apply_compile": "compiling",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'helm_scale.parallel' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"helm_scale.parallel.{_LAZY[name]}"), name)


__all__ = ["OptimizerConfig", "ParallelConfig"] + list(_LAZY)
