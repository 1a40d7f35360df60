"""Node side of a SLURM job: SLURM's environment -> this node's torchrun, exec'd.

    srun --ntasks-per-node=1 python -m launcher.slurm_node --nproc-per-node 8 -- train CONFIG [overrides]

The rendezvous is taken from the job: node 0 of the allocation (the first host of
``scontrol show hostnames $SLURM_JOB_NODELIST``) hosts it at --rdzv-port, the node rank is
SLURM_NODEID and the rendezvous id is the job id, the same again after a requeue.
``--dry-run`` prints the command instead of running it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from launcher.job import LaunchError
from launcher.plan import Options, Rendezvous, torchrun_argv
from launcher.record import exec_command, show, write_record


def scontrol_hostnames(nodelist: str) -> list[str]:
    """Expand a SLURM node list (e.g. ``gpu[01-04]``) the way SLURM does."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=60)
    except FileNotFoundError:
        raise LaunchError("scontrol is not on PATH: launcher.slurm_node runs inside a SLURM job") from None
    except subprocess.CalledProcessError as e:
        raise LaunchError(f"scontrol show hostnames {nodelist} failed: {e.stderr.strip()}") from None
    hosts = out.stdout.split()
    if not hosts:
        raise LaunchError(f"scontrol show hostnames {nodelist} printed no host")
    return hosts


def _env_int(environ: Mapping[str, str], *names: str) -> int:
    for name in names:
        if environ.get(name, "").strip():
            try:
                return int(environ[name])
            except ValueError:
                raise LaunchError(f"{name}={environ[name]!r} is not an integer") from None
    raise LaunchError(f"{' / '.join(names)} is not set: is this running inside a SLURM job (under srun)?")


def slurm_rendezvous(environ: Mapping[str, str], nproc_per_node: int | None, rdzv_port: int,
                     hostnames: Callable[[str], list[str]] = scontrol_hostnames) -> Rendezvous:
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        raise LaunchError("SLURM_JOB_ID is not set: launcher.slurm_node runs inside a SLURM job (under srun)")
    nnodes = _env_int(environ, "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    node_rank = _env_int(environ, "SLURM_NODEID")
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("SLURM_JOB_NODELIST is not set")
    if nproc_per_node is None:
        # SLURM_GPUS_ON_NODE is set when the job asked for GPUs; one process per GPU.
        nproc_per_node = _env_int(environ, "SLURM_GPUS_ON_NODE") if environ.get("SLURM_GPUS_ON_NODE") else 1
    rdzv = Rendezvous(nnodes=nnodes, nproc_per_node=nproc_per_node, node_rank=node_rank,
                      endpoint=f"{hostnames(nodelist)[0]}:{rdzv_port}", run_id=f"slurm-{job_id}")
    rdzv.check()
    return rdzv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launcher.slurm_node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc-per-node", type=int, help="workers on this node (default: SLURM_GPUS_ON_NODE, else 1)")
    p.add_argument("--rdzv-port", type=int, default=29500, help="port of the rendezvous on node 0 (default 29500)")
    p.add_argument("--max-restarts", type=int, default=3, help="torchrun restarts of the worker group (default 3)")
    p.add_argument("--log-dir", required=True, help="per-rank logs go to LOG_DIR/node<R>/")
    p.add_argument("--run-dir", help="where to record this node's launch (launch-node<R>.json)")
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command instead of running it")
    p.add_argument("worker_args", nargs=argparse.REMAINDER, help="-- then the helm_scale.cli arguments, e.g. train CONFIG")
    return p


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    worker_args = args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args
    environ = os.environ if environ is None else environ
    try:
        if not worker_args:
            raise LaunchError("no worker command: pass -- train CONFIG [overrides]")
        rdzv = slurm_rendezvous(environ, args.nproc_per_node, args.rdzv_port)
        opts = Options(python=sys.executable, log_dir=args.log_dir, max_restarts=args.max_restarts)
        command = torchrun_argv(rdzv, opts, worker_args)
    except LaunchError as e:
        print(f"launcher.slurm_node: error: {e}", file=sys.stderr)
        return 2
    restart = environ.get("SLURM_RESTART_COUNT", "0")
    print(f"launcher.slurm_node: job {environ.get('SLURM_JOB_ID')} (requeue {restart}) node {rdzv.node_rank}/"
          f"{rdzv.nnodes}: {rdzv.nproc_per_node} worker(s), rendezvous {rdzv.endpoint}", file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(show([command], {}))
        return 0
    if args.run_dir:
        write_record(Path(args.run_dir) / f"launch-node{rdzv.node_rank}.json", "slurm-node", [command], {},
                     slurm_restart_count=int(restart) if restart.isdigit() else restart)
    exec_command(command, {})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
