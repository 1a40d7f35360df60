"""Typed settings of the parallelism layer: how to split and step, not what to train."""
from __future__ import annotations

from dataclasses import dataclass

from helm_scale.parallel.backends import BACKENDS

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ParallelConfig:
    """backend "ddp": torch DDP over the data-parallel group (+ megatron TP), bf16 by autocast.
    backend "deepspeed": a DeepSpeed engine, ZeRO stage 0-3, bf16 by DeepSpeed (bf16 weights,
    fp32 master copy), megatron's parallel state passed as DeepSpeed's ``mpu``."""

    backend: str = "ddp"
    tensor_parallel: int = 1
    sequence_parallel: bool = False
    zero_stage: int = 0
    offload_optimizer: bool = False  # ZeRO-Offload: DeepSpeedCPUAdam, JIT-compiled on first use
    grad_clip: float = 1.0  # max global L2 norm; 0 disables clipping (the norm is still reported)
    accumulation_steps: int = 1
    precision: str = "fp32"
    seed: int = 1234
    # A collective waiting longer (a dead or hung peer) fails the job: long enough for a
    # checkpoint save or a slow first NCCL communicator, far below torch's 30 minutes.
    timeout_s: float = 600.0
    activation_checkpointing: bool = False  # recompute each transformer block in backward (memory for time)
    compile: bool = False  # torch.compile each transformer block (fused kernels; compiles on the first steps)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.tensor_parallel, int) or self.tensor_parallel < 1:
            raise ValueError(f"tensor_parallel must be an int >= 1, got {self.tensor_parallel!r}")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ValueError("sequence_parallel shards the sequence over TP ranks: it needs tensor_parallel > 1")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.zero_stage and self.backend != "deepspeed":
            raise ValueError(f"zero_stage {self.zero_stage} needs backend='deepspeed'")
        if self.offload_optimizer and (self.backend != "deepspeed" or self.zero_stage == 0):
            raise ValueError("offload_optimizer needs backend='deepspeed' and zero_stage >= 1")
        if self.compile and self.zero_stage == 3:
            # ZeRO-3 gathers each submodule's parameters in hooks that dynamo cannot trace
            # (measured: 28 graph breaks per 4 blocks and the recompile limit hit).
            raise ValueError("compile with zero_stage 3 is not supported: use zero_stage <= 2 or compile false")
        if not isinstance(self.accumulation_steps, int) or self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an int >= 1, got {self.accumulation_steps!r}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip!r}")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW. Weight decay applies to matrices only: never to norms and biases (1-D), and not
    to embedding tables unless decay_embeddings (decay pulls the rows of rarely seen tokens,
    such as <unk>, towards zero regardless of use; with tied embeddings that is the head too)."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    decay_embeddings: bool = False

    def __post_init__(self):
        if not (self.lr >= 0 and self.weight_decay >= 0 and self.eps > 0):
            raise ValueError(f"lr and weight_decay must be >= 0 and eps > 0: {self}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
