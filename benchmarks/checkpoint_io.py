"""Checkpoint save and load time and size per backend (helm_scale.checkpoint).

Each backend runs in its own group of real processes (gloo on CPU, NCCL on GPU): build
the model and engine, take one optimizer step so the AdamW moments exist, then time
Checkpointer.save (collective, including checksums and the atomic commit), verification
of the newest checkpoint (sha256 of every file), and Checkpointer.load into a fresh
engine. Size is the committed directory on disk. Weights + moments are 12 bytes per
parameter in fp32, so the floor is 12 x N bytes.

Usage:
  python -m benchmarks.checkpoint_io                                  # CPU, 2 ranks, HELM-50M
  python -m benchmarks.checkpoint_io --config configs/helm_1b.yaml --procs 1 --backends ddp zero1   # GPU
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from benchmarks.results_io import write_results

ROOT = Path(__file__).resolve().parents[1]

BACKENDS = {
    "ddp": ["parallel.backend=ddp"],
    "ddp_tp2": ["parallel.backend=ddp", "parallel.tensor_parallel=2"],
    "zero1": ["parallel.backend=deepspeed", "parallel.zero_stage=1"],
    "zero2": ["parallel.backend=deepspeed", "parallel.zero_stage=2"],
    "zero3": ["parallel.backend=deepspeed", "parallel.zero_stage=3"],
}


def _rank(rank, world, port, config, overrides, run_dir, out):
    import warnings
    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    import torch.distributed as dist

    from helm_scale.checkpoint import Checkpointer
    from helm_scale.models.registry import num_parameters
    from helm_scale.models.tp_transformer import TensorParallelTransformer
    from helm_scale.parallel import build_engine, init_parallel
    from helm_scale.train_config import load_train_config
    cfg = load_train_config(config, [*overrides, f"run.run_dir={run_dir}", "parallel.precision=fp32"])
    state = init_parallel(cfg.parallel)

    def engine():
        return build_engine(TensorParallelTransformer(cfg.model), cfg.optim, cfg.parallel, state)

    first = engine()
    ids = torch.randint(5, 69, (1, 32), device=state.device)
    first.backward(first(ids).float().mean())
    first.step()
    ckpt = Checkpointer(cfg, state, report=lambda text: None)
    dist.barrier()
    t0 = time.perf_counter()
    ckpt.save(1, first, {"epoch": 0, "rows_consumed": 0}, {"input_tokens": 0})
    t1 = time.perf_counter()
    point = ckpt.check_resumable(ckpt.find())  # rank 0 verifies every file's sha256
    t2 = time.perf_counter()
    del first
    second = engine()
    dist.barrier()
    t3 = time.perf_counter()
    ckpt.load(point, second)
    t4 = time.perf_counter()
    if rank == 0:
        size = sum(p.stat().st_size for p in point.directory.rglob("*") if p.is_file())
        torch.save({"save_s": t1 - t0, "verify_s": t2 - t1, "load_s": t4 - t3, "bytes": size,
                    "parameters": num_parameters(cfg.model)}, out)
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "helm_50m.yaml"))
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--dir", default=None, help="where to write checkpoints (default: a temporary directory)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for name in args.backends:
        work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
        out = work / "result.pt"
        mp.spawn(_rank, args=(args.procs, _free_port(), args.config, BACKENDS[name], str(work / "run"), str(out)),
                 nprocs=args.procs, join=True)
        result = torch.load(out, weights_only=True)
        rows.append({"backend": name, **result})
        shutil.rmtree(work, ignore_errors=True)
        r = rows[-1]
        print(f"{name:>8} | save {r['save_s']:6.2f} s | verify {r['verify_s']:6.2f} s | load {r['load_s']:6.2f} s"
              f" | {r['bytes'] / 2**20:8.1f} MiB ({r['bytes'] / (12 * r['parameters']):.2f} x 12N)", flush=True)
    print(f"\n{'backend':>8} | {'save s':>7} | {'verify s':>8} | {'load s':>7} | {'MiB':>8} | {'MB/s save':>9}")
    for r in rows:
        print(f"{r['backend']:>8} | {r['save_s']:7.2f} | {r['verify_s']:8.2f} | {r['load_s']:7.2f} | "
              f"{r['bytes'] / 2**20:8.1f} | {r['bytes'] / 1e6 / r['save_s']:9.1f}")
    write_results(args.out or ROOT / "benchmarks" / "results" / f"checkpoint_io_{device}.json", {
        "benchmark": "checkpoint_io", "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "config": args.config, "procs": args.procs, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
