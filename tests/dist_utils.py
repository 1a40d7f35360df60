"""Run a function on N real gloo processes from a test and collect what each rank returns.

torch.multiprocessing.spawn propagates a failing rank's exception to pytest within
seconds and kills its peers; a short process-group timeout turns a dead peer into an
error instead of torch's default 30-minute hang.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, fn, world_size, port, out_dir, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=90))
    result = fn(rank, world_size, *args)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    # gloo worker threads can abort the interpreter during finalisation (see
    # ../shared/CPU_DISTRIBUTED.md); a finished rank leaves through os._exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world_size: int, *args):
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes.

    ``fn`` must be a module-level function; its return values (anything torch.save
    handles) come back as a list indexed by rank.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank_main, args=(fn, world_size, free_port(), out_dir, args),
                 nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
                for r in range(world_size)]
