"""Launch training: local processes, multi-node torchrun, a SLURM job, or the DeepSpeed launcher.

    helm-scale launch local --nproc-per-node 2 configs/tiny.yaml data.dataset_dir=demo/shards
    helm-scale launch torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29500 CONFIG [overrides]
    helm-scale launch slurm --nodes 4 --gpus-per-node 8 --time 24:00:00 --partition gpu CONFIG [overrides]
    helm-scale launch deepspeed --hostfile hosts.txt CONFIG [overrides]

Every target checks the layout (world size a multiple of parallel.tensor_parallel)
before anything starts; --dry-run prints exactly what would run and starts nothing; the
run directory records how the job was launched (launch.json). Every rank logs to a file
under RUN_DIR/logs, local rank 0 also to the console. The torchrun-based targets restart
a failed worker group up to --max-restarts times and the trainer resumes from its newest
checkpoint; a collective that waits longer than --collective-timeout ends the job.
This command only starts processes: it never imports torch or the trainer.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from launcher.deepspeed_cmd import (
    LOCAL_HOSTS,
    check_plain,
    deepspeed_argv,
    is_remote,
    read_hostfile,
)
from launcher.job import Job, LaunchError, read_job
from launcher.plan import (
    Options,
    Rendezvous,
    node_log_dir,
    parse_endpoint,
    torchrun_argv,
    trainer_args,
    worker_env,
)
from launcher.record import exec_command, show, write_record
from launcher.slurm import SlurmSpec, render_sbatch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env_pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
    return key, value


def _common_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("every target")
    g.add_argument("config", help="training YAML file (see configs/)")
    g.add_argument("overrides", nargs="*", help="dotted overrides for the trainer, e.g. data.dataset_dir=DIR")
    g.add_argument("--dry-run", action="store_true", help="print the commands, environment and files; start nothing")
    g.add_argument("--collective-timeout", type=float, metavar="SECONDS",
                   help="a collective waiting longer ends the job, naming the rank and operation; passed as "
                        "parallel.timeout_s (default, or 0: the config's parallel.timeout_s)")
    g.add_argument("--nccl-debug", choices=["VERSION", "WARN", "INFO", "TRACE"], help="set NCCL_DEBUG")
    g.add_argument("--distributed-debug", choices=["OFF", "INFO", "DETAIL"], help="set TORCH_DISTRIBUTED_DEBUG")
    g.add_argument("--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the workers (repeatable)")
    g.add_argument("--python", default=sys.executable, help="Python on the nodes (default: this one, %(default)s)")
    g.add_argument("--log-dir", help="per-rank logs (default RUN_DIR/logs)")
    elastic = argparse.ArgumentParser(add_help=False)
    e = elastic.add_argument_group("restarts")
    e.add_argument("--max-restarts", type=int, default=3,
                   help="restart a failed worker group this many times; it resumes from the last checkpoint (default 3)")
    e.add_argument("--stop-grace", type=int, default=60, metavar="SECONDS",
                   help="after SIGTERM workers get this long to save a checkpoint before SIGKILL (default 60)")
    return common, elastic


def add_arguments(p: argparse.ArgumentParser) -> None:
    common, elastic = _common_parsers()
    sub = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("local", parents=[elastic, common], formatter_class=fmt,
                       help="N processes on this machine (torchrun --standalone)",
                       description="N worker processes on this machine, started by torchrun --standalone.")
    t.add_argument("--nproc-per-node", type=int, default=1, metavar="N", help="worker processes (default 1)")

    t = sub.add_parser("torchrun", parents=[elastic, common], formatter_class=fmt,
                       help="one node of a multi-node job (torchrun, c10d rendezvous)",
                       description="Run this on every node with the same --nnodes, --rdzv-endpoint and --rdzv-id\n"
                                   "and each node's own --node-rank. Node 0 hosts the rendezvous at the endpoint.")
    t.add_argument("--nnodes", type=int, required=True, help="number of nodes")
    t.add_argument("--node-rank", type=int, required=True, help="this node's rank, 0..nnodes-1")
    t.add_argument("--rdzv-endpoint", required=True, metavar="HOST:PORT", help="node 0's address and a free port")
    t.add_argument("--rdzv-id", help="job id shared by all nodes (default: helm-<run dir name>)")
    t.add_argument("--nproc-per-node", type=int, default=1, metavar="N", help="workers per node (default 1)")

    t = sub.add_parser("slurm", parents=[elastic, common], formatter_class=fmt,
                       help="render an sbatch script and submit it (requeues itself near the time limit)",
                       description="Render an sbatch script (RUN_DIR/job.sbatch) and submit it with sbatch. srun\n"
                                   "starts `python -m launcher.slurm_node` on every node, which execs torchrun.\n"
                                   "--requeue and --signal=B:USR1@S: near the time limit the workers save a\n"
                                   "checkpoint, the job requeues itself and resumes when it runs again.")
    t.add_argument("--nodes", type=int, required=True, help="number of nodes")
    t.add_argument("--gpus-per-node", type=int, default=0, help="GPUs to request per node (default 0)")
    t.add_argument("--procs-per-node", type=int, help="workers per node (default: --gpus-per-node, else 1)")
    t.add_argument("--time", help="time limit, e.g. 24:00:00 (default: the partition's)")
    t.add_argument("--partition", help="SLURM partition")
    t.add_argument("--account", help="SLURM account")
    t.add_argument("--job-name", help="default: helm-<run dir name>")
    t.add_argument("--cpus-per-task", type=int, help="CPUs per node for torchrun and its workers")
    t.add_argument("--signal-seconds", type=int, default=300,
                   help="save and requeue this long before the time limit (default 300)")
    t.add_argument("--rdzv-port", type=int, default=29500, help="rendezvous port on the first node (default 29500)")
    t.add_argument("--sbatch-option", action="append", default=[], metavar="--NAME[=VALUE]",
                   help="extra #SBATCH directive, e.g. --sbatch-option=--qos=high (repeatable)")
    t.add_argument("--script", help="where to write the sbatch script (default RUN_DIR/job.sbatch)")

    t = sub.add_parser("deepspeed", parents=[common], formatter_class=fmt,
                       help="the DeepSpeed launcher with a hostfile (ssh / pdsh; no restarts)",
                       description="Start workers with DeepSpeed's launcher on the hosts of a hostfile\n"
                                   "('HOST slots=N' per line), through pdsh and ssh. No automatic restarts.")
    t.add_argument("--hostfile", required=True, help="'HOST slots=N' per line")
    t.add_argument("--nproc-per-node", type=int, metavar="N", help="workers per host (default: its slots)")
    t.add_argument("--master-addr", help="address of the first host as the others see it (default: its name)")
    t.add_argument("--master-port", type=int, default=29500, help="default 29500")


def _options(args, job: Job, absolute: bool = False) -> Options:
    log_dir = args.log_dir or str(Path(job.run_dir) / "logs")
    return Options(python=args.python, log_dir=str(Path(log_dir).absolute()) if absolute else log_dir,
                   max_restarts=getattr(args, "max_restarts", 0), collective_timeout_s=args.collective_timeout,
                   stop_grace_s=getattr(args, "stop_grace", 60), nccl_debug=args.nccl_debug,
                   distributed_debug=args.distributed_debug, extra_env=tuple(args.env))


def _start_torchrun(args, job: Job, rdzv: Rendezvous, record: str) -> int:
    rdzv.check()
    job.check_world(rdzv.world_size, rdzv.describe())
    opts = _options(args, job)
    if opts.stop_grace_s < 0:
        raise LaunchError(f"--stop-grace must be >= 0, got {opts.stop_grace_s}")
    command = torchrun_argv(rdzv, opts, trainer_args(job, opts))
    env = worker_env(opts)
    if args.dry_run:
        sys.stdout.write(show([command], env))
        return 0
    write_record(Path(job.run_dir) / record, args.target, [command], env)
    print(f"helm-scale launch: {rdzv.describe()}, world size {rdzv.world_size}; every rank logs to "
          f"{node_log_dir(opts.log_dir, rdzv.node_rank)}/", file=sys.stderr)
    exec_command(command, env)
    return 0  # not reached


def _local(args) -> int:
    job = read_job(args.config, args.overrides)
    return _start_torchrun(args, job, Rendezvous(nnodes=1, nproc_per_node=args.nproc_per_node), "launch.json")


def _torchrun(args) -> int:
    job = read_job(args.config, args.overrides)
    parse_endpoint(args.rdzv_endpoint)
    run_id = args.rdzv_id or "helm-" + re.sub(r"[^\w.-]", "_", Path(job.run_dir).name or "run")
    rdzv = Rendezvous(nnodes=args.nnodes, nproc_per_node=args.nproc_per_node, node_rank=args.node_rank,
                      endpoint=args.rdzv_endpoint, run_id=run_id)
    record = "launch.json" if args.node_rank == 0 else f"launch-node{args.node_rank}.json"
    return _start_torchrun(args, job, rdzv, record)


def _slurm(args) -> int:
    job = read_job(args.config, args.overrides)
    procs = args.procs_per_node or args.gpus_per_node or 1
    job.check_world(args.nodes * procs, f"{args.nodes} node(s) x {procs} process(es)")
    opts = _options(args, job, absolute=True)
    if not 0 <= opts.stop_grace_s < args.signal_seconds:
        raise LaunchError(f"--stop-grace {opts.stop_grace_s} must be below --signal-seconds {args.signal_seconds}: "
                          "the workers must finish saving before the time limit")
    run_dir = Path(job.run_dir).absolute()
    spec = SlurmSpec(
        nodes=args.nodes, procs_per_node=procs, gpus_per_node=args.gpus_per_node,
        job_name=args.job_name or f"helm-{run_dir.name}", workdir=os.getcwd(), repo_root=str(REPO_ROOT),
        # % starts a SLURM filename pattern: a literal one in the path is written %%.
        output=opts.log_dir.replace("%", "%%") + "/slurm-%j.out", time=args.time, partition=args.partition,
        account=args.account, cpus_per_task=args.cpus_per_task, signal_seconds=args.signal_seconds,
        extra_directives=tuple(args.sbatch_option))
    node_command = [opts.python, "-m", "launcher.slurm_node", "--nproc-per-node", str(procs),
                    "--rdzv-port", str(args.rdzv_port), "--max-restarts", str(opts.max_restarts),
                    "--log-dir", opts.log_dir, "--run-dir", str(run_dir), "--", *trainer_args(job, opts)]
    script = render_sbatch(spec, worker_env(opts), node_command)
    script_path = Path(args.script).absolute() if args.script else run_dir / "job.sbatch"
    submit = ["sbatch", "--parsable", str(script_path)]
    if args.dry_run:
        sys.stdout.write(show([submit], {}, {str(script_path): script}))
        return 0
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch is not on PATH: submit from a SLURM login node (or use --dry-run)")
    Path(opts.log_dir).mkdir(parents=True, exist_ok=True)  # SLURM does not create --output's directory
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(script)
    done = subprocess.run(submit, check=False, capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode:
        print(f"helm-scale launch slurm: sbatch failed with exit code {done.returncode}", file=sys.stderr)
        return done.returncode
    job_id = done.stdout.strip().split(";")[0]
    write_record(run_dir / "launch.json", "slurm", [submit], worker_env(opts), script=str(script_path), job_id=job_id)
    print(f"submitted job {job_id}: {args.nodes} node(s) x {procs} process(es); SLURM log "
          f"{opts.log_dir}/slurm-{job_id}.out, per-rank logs {opts.log_dir}/node<R>/")
    return 0


def _deepspeed(args) -> int:
    job = read_job(args.config, args.overrides)
    hosts = read_hostfile(args.hostfile)
    world = sum(args.nproc_per_node or slots for slots in hosts.values())
    job.check_world(world, f"{len(hosts)} host(s) of {args.hostfile}")
    opts = _options(args, job)
    first = next(iter(hosts))
    master_addr = args.master_addr or ("127.0.0.1" if first in LOCAL_HOSTS else first)
    worker = trainer_args(job, opts)
    env = {k: v for k, v in worker_env(opts).items() if k != "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"}
    log_dir = str(Path(opts.log_dir) / "deepspeed")
    files = {}
    if is_remote(hosts):
        check_plain({"config": job.config, "working directory": os.getcwd(), "log dir": log_dir,
                     "python": opts.python, **{f"override {i}": o for i, o in enumerate(worker[2:])},
                     **{f"environment {k}": v for k, v in env.items()}})
        # DeepSpeed exports only some variables to remote nodes; the rest go in its env file.
        env_file = Path(job.run_dir).absolute() / "deepspeed_env"
        files[str(env_file)] = "".join(f"{k}={v}\n" for k, v in env.items())
        env["DS_ENV_FILE"] = str(env_file)
    command = deepspeed_argv(opts.python, args.hostfile, hosts, master_addr, args.master_port, args.nproc_per_node,
                             log_dir, worker)
    if args.dry_run:
        sys.stdout.write(show([command], env, files))
        return 0
    for path, text in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    write_record(Path(job.run_dir) / "launch.json", "deepspeed", [command], env, hosts=hosts)
    exec_command(command, env)
    return 0  # not reached


TARGETS = {"local": _local, "torchrun": _torchrun, "slurm": _slurm, "deepspeed": _deepspeed}


def run(args) -> int:
    try:
        return TARGETS[args.target](args)
    except LaunchError as e:
        print(f"helm-scale launch {args.target}: error: {e}", file=sys.stderr)
        return 2
