"""The interface every parallel backend implements: one training step, and its own state.

    engine = build_engine(model, OptimizerConfig(...), parallel_cfg, state)   # backends.py
    tokens = global_token_count([b["loss_mask"] for b in step_batches], state.dp_group)
    for micro_batch in step_batches:              # accumulation_steps per optimizer step
        logits = engine(input_ids, position_ids, segment_ids)  # precision context applied
        out = loss_fn(logits, targets, loss_mask, group=state.loss_group)
        engine.backward(out.loss_sum / tokens)    # this micro-batch's share of the step objective
        stepped, grad_norm = engine.step()        # steps (and zeroes grads) only at the boundary
    engine.save(directory) / engine.load(directory, universal)   # collective, see below

``backward(share)``: the step's objective is the sum of the shares over the accumulation
window's micro-batches and the data-parallel ranks, and the gradient the step applies is
that sum's gradient. DDP and DeepSpeed both average gradients over the DP ranks and
DeepSpeed also divides by its accumulation steps; the engines undo both, so that any
normalisation is the caller's (helm_scale.trainer: the token mean over the global batch).

State: an engine writes and reads its weights and optimizer state in its library's own
format, in a directory helm_scale.checkpoint gives it (which keeps the directory's
atomicity, checksums, meta, RNG streams and the resume rules, and never asks which engine
it has). The class-level parts work before an engine exists (resume planning) or without
one (export): ``resume_route(was, now)`` and ``read_full_weights(directory, layout)``.

Attributes: module (the plain model, for eval and checkpoints), optimizer (the torch
optimizer), micro_steps. grad_norm is the global norm before clipping (a device tensor or
a float: reading a tensor syncs, so read it when logging), or None when no step was taken
(or DeepSpeed did not compute it).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import nn

from helm_scale.parallel.config import ParallelConfig
from helm_scale.parallel.weights import gather_tp_state

if TYPE_CHECKING:  # state.py imports megatron-core; reading a checkpoint needs none
    from helm_scale.parallel.state import ParallelState


class StepResult(NamedTuple):
    stepped: bool
    grad_norm: torch.Tensor | float | None


class Engine:
    backend: ClassVar[str]  # ParallelConfig.backend, recorded in every checkpoint's layout
    module: nn.Module
    optimizer: torch.optim.Optimizer

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

    # ---- state ------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Collective: every rank writes its part of the weights and optimizer state under
        ``directory`` (a checkpoint's staging directory)."""
        raise NotImplementedError

    def load(self, directory: Path, universal: bool = False) -> None:
        """Collective: load ``directory``'s state in place, at whatever layout saved it, as
        ``resume_route`` decided (``universal``: through the layout-free form)."""
        raise NotImplementedError

    @classmethod
    def resume_route(cls, was: dict, now: dict) -> bool:
        """Can this backend's state saved at layout ``was`` load at ``now`` (layouts as
        helm_scale.checkpoint records them: world_size, dp, tp, backend, zero_stage,
        precision)? Raises ValueError naming the setting to use if not; returns whether
        ``load`` must go through the universal form."""
        return False

    @classmethod
    def read_full_weights(cls, directory: Path, layout: dict) -> dict[str, torch.Tensor]:
        """Full fp32 weights of a saved state, read in this process alone (no process group)."""
        raise NotImplementedError
