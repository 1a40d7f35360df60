"""One line for a failed collective: which rank, which operation, why.

A collective whose peer hangs raises, after the process group's timeout, an error that
names neither the operation nor the rank (gloo: "Timed out waiting 600000ms for recv
operation to complete"); one whose peer died raises "Connection closed by peer". The
operation is recovered from the traceback (the torch.distributed function, or the
backward pass for DDP's gradient all-reduce), the timeout from the message.
"""
from __future__ import annotations

import re
import traceback

_C10D = "torch/distributed/distributed_c10d.py"
_AUTOGRAD = "torch/autograd/"


def _operation(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if frame.filename.replace("\\", "/").endswith(_C10D) and not frame.name.startswith("_"):
            return frame.name
    nccl = re.search(r"OpType=(\w+)", str(exc))
    if nccl:
        return nccl.group(1).lower()
    if any(_AUTOGRAD in f.filename.replace("\\", "/") for f in frames):
        return "gradient all-reduce (backward)"
    return "collective"


def _cause(message: str) -> str:
    # gloo prefixes its messages with "[/path/file.cc:LINE] "; keep the words after it.
    return re.sub(r"^\[[^\]]*\]\s*", "", message.strip().splitlines()[0] if message.strip() else "")[:200]


def collective_failure(exc: BaseException, rank: int, timeout_s: float | None = None) -> str | None:
    """The line to print for a collective that timed out or lost its peer, else None."""
    message = str(exc)
    if re.search(r"timed out|timeout", message, re.IGNORECASE):
        ms = re.search(r"Timed out waiting (\d+)ms|Timeout\(ms\)=(\d+)", message)
        seconds = int(ms.group(1) or ms.group(2)) / 1000 if ms else timeout_s
        after = f" after {seconds:g} s" if seconds is not None else ""
        return (f"rank {rank}: {_operation(exc)} timed out{after}: another rank is hung or dead "
                f"(see its log) [{_cause(message)}]")
    if re.search(r"closed by peer|Connection reset|Broken pipe", message, re.IGNORECASE):
        return (f"rank {rank}: {_operation(exc)} failed: another rank exited or crashed "
                f"(see its log) [{_cause(message)}]")
    return None
