"""One training-step interface over DDP (+ megatron TP) and DeepSpeed (ZeRO 0-3, + TP).

    engine = build_engine(model, OptimizerConfig(...), parallel_cfg, state)
    tokens = global_token_count([b["loss_mask"] for b in step_batches], state.dp_group)
    for micro_batch in step_batches:              # accumulation_steps per optimizer step
        logits = engine(input_ids, position_ids, segment_ids)  # precision context applied
        out = loss_fn(logits, targets, loss_mask, group=state.loss_group)
        engine.backward(out.loss_sum / tokens)    # this micro-batch's share of the step objective
        stepped, grad_norm = engine.step()        # steps (and zeroes grads) only at the boundary

``backward(share)``: the step's objective is the sum of the shares over the accumulation
window's micro-batches and the data-parallel ranks, and the gradient the step applies is
that sum's gradient. DDP and DeepSpeed both average gradients over the DP ranks and
DeepSpeed also divides by its accumulation steps; the engines undo both, so that any
normalisation is the caller's (helm_scale.trainer: the token mean over the global batch).

Engine attributes: module (the plain model, for eval and checkpoints), optimizer (the torch
optimizer), ds_engine (DeepSpeed engine or None), micro_steps. grad_norm is the global norm
before clipping (a device tensor or a float: reading a tensor syncs, so read it when
logging), or None when no step was taken (or DeepSpeed did not compute it).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from helm_scale.parallel.config import OptimizerConfig, ParallelConfig
from helm_scale.parallel.optim import build_adamw, build_param_groups, clip_grad_norm_tp
from helm_scale.parallel.state import ParallelState
from helm_scale.parallel.weights import gather_tp_state


class StepResult(NamedTuple):
    stepped: bool
    grad_norm: torch.Tensor | float | None


class Engine:
    module: nn.Module
    optimizer: torch.optim.Optimizer
    ds_engine = None

    def __init__(self, cfg: ParallelConfig, state: ParallelState):
        self.cfg, self.state, self.micro_steps = cfg, state, 0

    @property
    def at_boundary(self) -> bool:
        """True when the next backward completes an accumulation window."""
        return (self.micro_steps + 1) % self.cfg.accumulation_steps == 0

    def __call__(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> StepResult:
        raise NotImplementedError

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        # The torch optimizer's group dicts are the ones every wrapper (DDP, ZeRO) steps with.
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def eval(self) -> None:
        self.module.eval()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 CPU weights, gathered over TP (and ZeRO-3). Collective: call on every rank."""
        return gather_tp_state(self.module, self.state.tp_group)


class DDPEngine(Engine):
    """torch DDP over megatron's data-parallel group; TP collectives live in the layers.
    bf16 is autocast (fp32 weights, optimizer and gradients), on CUDA only."""

    def __init__(self, model: nn.Module, optim_cfg: OptimizerConfig, cfg: ParallelConfig,
                 state: ParallelState):
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
    if cfg.backend == "ddp":
        if cfg.precision == "bf16" and state.device.type != "cuda":
            # megatron's TP linears restore only CUDA autocast in their backward: on CPU the
            # backward would multiply bf16 gradients with fp32 weights and fail.
            raise ValueError("precision='bf16' with backend='ddp' uses CUDA autocast; on CPU "
                             "use backend='deepspeed' (bf16 weights, fp32 master copy)")
        return DDPEngine(model, optim_cfg, cfg, state)
    from helm_scale.parallel.deepspeed_engine import DeepSpeedEngine
    return DeepSpeedEngine(model, optim_cfg, cfg, state)
