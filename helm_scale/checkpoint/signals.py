"""Save on the way out: SIGTERM (torchrun's, a scheduler's) and SIGUSR1 (SLURM's warning
before preemption or the time limit, e.g. ``#SBATCH --signal=USR1@120``).

A handler only records the signal; the trainer asks at each step boundary whether any
rank received one, so every rank saves the same step together and then exits with 128 +
the signal number. The question is a 4-byte all-reduce on the host: over the default group
when it is gloo, else over a gloo group made once here, so it never waits for the device
(an NCCL flag read by .item() would stall the host until the step's kernels finished).
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

SAVE_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class SaveOnSignal:
    """Collective to construct (on a non-gloo default group it creates a gloo group)."""

    def __init__(self, signals=SAVE_SIGNALS):
        self.received = 0
        self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        for sig in signals:
            signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        self.received = signum

    def agreed(self) -> int:
        """Collective: the signal any rank received, 0 if none."""
        flag = torch.tensor([self.received], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag.item())
