"""DeepSpeed backend: ZeRO stage 0-3 (optional optimizer offload), with megatron TP, its
state in DeepSpeed's own checkpoints.

DeepSpeed gets megatron-core's parallel state as its ``mpu`` (as Megatron-DeepSpeed does),
so ZeRO partitions over the data-parallel group only and its gradient norm counts
TP-replicated parameters once. Clipping, accumulation and bf16 are DeepSpeed's own.
On CPU no compiler is needed: a torch AdamW is passed in and the shared-memory comm op
is switched off; only offload_optimizer JIT-builds DeepSpeedCPUAdam (1-1.5 min, once).

State: save_checkpoint / load_checkpoint, and DeepSpeed's universal checkpoint conversion
to resume ZeRO at another DP size. DeepSpeed calls torch.load with weights_only=False;
while it loads, torch.load is forced to weights_only=True with an allow-list of the three
plain DeepSpeed classes its files contain.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from helm_scale.parallel.config import OptimizerConfig, ParallelConfig
from helm_scale.parallel.engine import Engine, StepResult
from helm_scale.parallel.optim import build_adamw, build_param_groups
from helm_scale.parallel.weights import gather_tp_state

if TYPE_CHECKING:
    from helm_scale.parallel.state import ParallelState

# Inside a checkpoint directory: the native checkpoint, its tag, the universal conversion.
DEEPSPEED_DIR, DEEPSPEED_TAG, UNIVERSAL_DIR = "deepspeed", "state", "universal"

# torch >= 2.13 warns at every collective DeepSpeed's ZeRO issues (deprecated call forms).
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(deepspeed|torch\.distributed)")


class MegatronMpu:
    """megatron.core.parallel_state plus the legacy names DeepSpeed still calls; without
    pipeline parallelism the model-parallel group is the TP group."""

    def __init__(self):
        from megatron.core import parallel_state  # on use: reading a checkpoint needs no megatron
        self.parallel_state = parallel_state

    def __getattr__(self, name):
        return getattr(self.parallel_state, name)

    def get_model_parallel_rank(self) -> int:
        return self.parallel_state.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self.parallel_state.get_tensor_model_parallel_world_size()

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(self.parallel_state.get_data_parallel_group())


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
    backend = "deepspeed"

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

    # ---- state: DeepSpeed's checkpoints -----------------------------------------------------

    def save(self, directory: Path) -> None:
        self.ds_engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False)

    def load(self, directory: Path, universal: bool = False) -> None:
        if universal:
            if self.state.is_main:
                _convert_to_universal(directory)
            dist.barrier()
        root = directory / (UNIVERSAL_DIR if universal else DEEPSPEED_DIR)
        self.ds_engine._config.load_universal_checkpoint = universal
        with weights_only_torch_load():
            path, _ = self.ds_engine.load_checkpoint(str(root), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                                     load_lr_scheduler_states=False, load_module_strict=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {root}")

    @classmethod
    def resume_route(cls, was: dict, now: dict) -> bool:
        for key in ("zero_stage", "precision", "tp"):
            if was[key] != now[key]:
                name = {"tp": "tensor_parallel"}.get(key, key)
                raise ValueError(
                    f"DeepSpeed cannot resume a checkpoint with {name}={was[key]} at {name}={now[key]}: "
                    f"resume with parallel.{name}={was[key]}"
                    + ("; changing TP is supported with parallel.backend=ddp" if key == "tp" else ""))
        # ZeRO 1-3 partition the optimizer state by DP rank; ZeRO 0 keeps none partitioned.
        return was["dp"] != now["dp"] and now["zero_stage"] > 0

    @classmethod
    def read_full_weights(cls, directory: Path, layout: dict) -> dict[str, torch.Tensor]:
        """Any ZeRO stage, through DeepSpeed's zero_to_fp32."""
        if layout["tp"] > 1:
            raise NotImplementedError("exporting a DeepSpeed checkpoint trained with tensor_parallel > 1 "
                                      "is not supported yet; train with parallel.backend=ddp for TP exports")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        with weights_only_torch_load():
            weights = get_fp32_state_dict_from_zero_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG)
        return {k: v.float() for k, v in weights.items()}


def _convert_to_universal(directory: Path) -> Path:
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
