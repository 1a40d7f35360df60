"""Parallelism applied outside the model: process groups, engines, optimizer settings.

  init_parallel(cfg: ParallelConfig, timeout_s=600.0) -> ParallelState
  build_engine(model, optim_cfg: OptimizerConfig, cfg: ParallelConfig, state) -> Engine
  Engine: __call__(...) -> logits_shard, backward(loss), step() -> StepResult(stepped, grad_norm),
          zero_grad(), set_lr(lr), train()/eval(), full_state_dict(); attributes module,
          optimizer (torch), ds_engine (DeepSpeed engine or None), micro_steps
  build_param_groups(model, optim_cfg), clip_grad_norm_tp(params, max_norm, tp_group)
  gather_tp_state(module, tp_group), set_seed(seed), shutdown(code)

The DeepSpeed backend is imported only when chosen. CPU patches for megatron-core
(cpu_compat) are applied by init_parallel on CPU-only runs, never at import.
"""
from helm_scale.parallel.config import OptimizerConfig, ParallelConfig
from helm_scale.parallel.engine import DDPEngine, Engine, StepResult, build_engine
from helm_scale.parallel.optim import build_adamw, build_param_groups, clip_grad_norm_tp
from helm_scale.parallel.state import ParallelState, init_parallel, set_seed, shutdown
from helm_scale.parallel.weights import gather_tp_state

__all__ = ["DDPEngine", "Engine", "OptimizerConfig", "ParallelConfig", "ParallelState", "StepResult",
           "build_adamw", "build_engine", "build_param_groups", "clip_grad_norm_tp", "gather_tp_state",
           "init_parallel", "set_seed", "shutdown"]
