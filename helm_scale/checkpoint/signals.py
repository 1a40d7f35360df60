"""Save on the way out: SIGTERM (torchrun's, a scheduler's) and SIGUSR1 (SLURM's warning
before preemption or the time limit, e.g. ``#SBATCH --signal=USR1@120``).

A handler only records the signal; the trainer asks at each step boundary whether any
rank received one (one tiny all-reduce), so every rank saves the same step together and
then exits with 128 + the signal number.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

SAVE_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class SaveOnSignal:
    def __init__(self, device: torch.device, signals=SAVE_SIGNALS):
        self.received, self.device = 0, device
        for sig in signals:
            signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        self.received = signum

    def agreed(self) -> int:
        """Collective: the signal any rank received, 0 if none."""
        flag = torch.tensor([self.received], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
