"""DeepSpeed backend: ZeRO stage 0-3 (optional optimizer offload), with megatron TP.

DeepSpeed gets megatron-core's parallel state as its ``mpu`` (as Megatron-DeepSpeed does),
so ZeRO partitions over the data-parallel group only and its gradient norm counts
TP-replicated parameters once. Clipping, accumulation and bf16 are DeepSpeed's own.
On CPU no compiler is needed: a torch AdamW is passed in and the shared-memory comm op
is switched off; only offload_optimizer JIT-builds DeepSpeedCPUAdam (1-1.5 min, once).
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch import nn

from helm_scale.parallel.config import OptimizerConfig, ParallelConfig
from helm_scale.parallel.engine import Engine, StepResult
from helm_scale.parallel.optim import build_adamw, build_param_groups
from helm_scale.parallel.state import ParallelState
from helm_scale.parallel.weights import gather_tp_state

# torch >= 2.13 warns at every collective DeepSpeed's ZeRO issues (deprecated call forms).
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(deepspeed|torch\.distributed)")


class MegatronMpu:
    """megatron.core.parallel_state plus the legacy names DeepSpeed still calls; without
    pipeline parallelism the model-parallel group is the TP group."""

    def __getattr__(self, name):
        return getattr(parallel_state, name)

    def get_model_parallel_rank(self) -> int:
        return parallel_state.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return parallel_state.get_tensor_model_parallel_world_size()

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(parallel_state.get_data_parallel_group())


def _import_deepspeed(device: torch.device):
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    if device.type == "cpu":
        # Otherwise init_distributed JIT-compiles a shared-memory op (30-70 s, needs a compiler).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def _deepspeed_reports_norm(cfg: ParallelConfig) -> bool:
    """DeepSpeed without ZeRO and without bf16 clips but throws the norm away
    (engine.get_global_grad_norm() stays None); there we call the same DeepSpeed utility."""
    return cfg.zero_stage > 0 or cfg.precision == "bf16"


def deepspeed_config(cfg: ParallelConfig) -> dict:
    zero = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        # Batches come from our loader, never DeepSpeed's: this only feeds its throughput logs.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.accumulation_steps,
        "gradient_clipping": cfg.grad_clip if _deepspeed_reports_norm(cfg) else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2 ** 31,
    }


class DeepSpeedEngine(Engine):
    def __init__(self, model: nn.Module, optim_cfg: OptimizerConfig, cfg: ParallelConfig,
                 state: ParallelState):
        super().__init__(cfg, state)
        deepspeed = _import_deepspeed(state.device)
        deepspeed.init_distributed(dist_backend=dist.get_backend())
        model = model.to(state.device)
        groups = build_param_groups(model, optim_cfg)
        if cfg.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            optimizer = DeepSpeedCPUAdam(groups, lr=optim_cfg.lr, betas=optim_cfg.betas,
                                         eps=optim_cfg.eps, adamw_mode=True)
        else:
            optimizer = build_adamw(groups, optim_cfg)
        self.ds_engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg), mpu=MegatronMpu())
        self.module, self.optimizer = self.ds_engine.module, optimizer

    def __call__(self, *args, **kwargs):
        return self.ds_engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        # The loss is already this micro-batch's share of the step objective (engine.py):
        # scale_wrt_gas=False stops DeepSpeed dividing it by gradient_accumulation_steps,
        # and times dp_size undoes the mean its gradient reduction takes over the DP ranks
        # (ZeRO 0: engine.allreduce_bucket; 1/2: average_tensor; 3:
        # __avg_scatter_contiguous_grads; each divides by the DP world size). The config's
        # "gradient_allreduce_op": "sum" would say so directly, but DeepSpeed 0.19 refuses
        # it for ZeRO-3, and one way for every stage is simpler. tests/test_token_mean.py
        # checks every stage against a hand-computed token mean.
        self.ds_engine.backward(loss * self.state.dp_size, scale_wrt_gas=False)
        self.micro_steps += 1

    def step(self) -> StepResult:
        boundary = self.ds_engine.is_gradient_accumulation_boundary()
        norm = None
        if boundary and not _deepspeed_reports_norm(self.cfg):
            from deepspeed.runtime.utils import clip_grad_norm_
            norm = clip_grad_norm_(list(self.module.parameters()), self.cfg.grad_clip or float("inf"),
                                   mpu=self.ds_engine.mpu)
        self.ds_engine.step()  # steps and zeroes gradients only at the boundary
        if not boundary:
            return StepResult(False, None)
        if norm is None:
            norm = self.ds_engine.get_global_grad_norm()
        return StepResult(True, norm)

    def zero_grad(self) -> None:
        self.ds_engine.zero_grad()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        if self.cfg.zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters(list(self.module.parameters())):
                return gather_tp_state(self.module, self.state.tp_group)
        return gather_tp_state(self.module, self.state.tp_group)
