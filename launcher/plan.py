"""The torchrun command line and the environment every worker runs with.

One builder serves every torchrun-based target (local, torchrun multi-node, and each
SLURM node), so what --dry-run prints is what runs. Commands are argument lists, never
shell strings: values from configs and the command line are data wherever they go.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from launcher.job import Job, LaunchError


@dataclass(frozen=True)
class Options:
    """Settings shared by every target."""

    python: str
    log_dir: str
    max_restarts: int = 3
    collective_timeout_s: float | None = None  # None or 0: the config's parallel.timeout_s
    stop_grace_s: int = 60                      # SIGTERM -> SIGKILL: time for the workers to save
    nccl_debug: str | None = None
    distributed_debug: str | None = None
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int
    nproc_per_node: int
    node_rank: int = 0
    endpoint: str | None = None  # node 0's host:port; None: one node (torchrun --standalone)
    run_id: str = "none"

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def describe(self) -> str:
        return f"{self.nnodes} node(s) x {self.nproc_per_node} process(es)"

    def check(self) -> None:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise LaunchError(f"need at least one node and one process per node, got {self.describe()}")
        if not 0 <= self.node_rank < self.nnodes:
            raise LaunchError(f"node rank {self.node_rank} is outside 0..{self.nnodes - 1}")
        if self.endpoint is not None:
            parse_endpoint(self.endpoint)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"rendezvous endpoint {endpoint!r} is not HOST:PORT")
    return host, int(port)


def trainer_args(job: Job, opts: Options) -> list[str]:
    """Arguments of ``python -m helm_scale.cli``: the training command each worker runs.
    --collective-timeout reaches the trainer as an override; without it the trainer keeps
    its config's parallel.timeout_s."""
    seconds = opts.collective_timeout_s
    if seconds is not None and seconds < 0:
        raise LaunchError(f"--collective-timeout must be >= 0 seconds, got {seconds:g}")
    extra = [f"parallel.timeout_s={seconds:g}"] if seconds else []
    return ["train", job.config, *job.overrides, *extra]


def worker_env(opts: Options) -> dict[str, str]:
    env = {
        # torchrun >= 2.4 shares one rendezvous TCPStore across restarts; the restarted
        # gloo group then reads the dead attempt's addresses and every restart hangs in
        # init_process_group (measured with torch 2.13). A fresh store per attempt fixes it.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        # A failed or timed-out NCCL collective tears the process down instead of hanging.
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        # torchrun's wait between SIGTERM (workers save a checkpoint) and SIGKILL.
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(opts.stop_grace_s),
        "PYTHONUNBUFFERED": "1",
    }
    if opts.nccl_debug:
        env["NCCL_DEBUG"] = opts.nccl_debug
    if opts.distributed_debug:
        env["TORCH_DISTRIBUTED_DEBUG"] = opts.distributed_debug
    env.update(opts.extra_env)
    return env


def node_log_dir(log_dir: str, node_rank: int) -> str:
    return str(Path(log_dir) / f"node{node_rank}")


def torchrun_argv(rdzv: Rendezvous, opts: Options, worker_args: list[str]) -> list[str]:
    argv = [opts.python, "-m", "torch.distributed.run",
            "--nnodes", str(rdzv.nnodes), "--nproc-per-node", str(rdzv.nproc_per_node)]
    if rdzv.endpoint is None:
        argv.append("--standalone")
    else:
        # Node 0 hosts the rendezvous store at the endpoint; saying so stops other nodes
        # on the same host (and tests on loopback) from racing to host it.
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv.endpoint, "--rdzv-id", rdzv.run_id,
                 "--rdzv-conf", f"is_host={int(rdzv.node_rank == 0)}"]
    if opts.max_restarts < 0:
        raise LaunchError(f"--max-restarts must be >= 0, got {opts.max_restarts}")
    # Every rank to a file under the log dir (attempt_<restart>/<local rank>/), local
    # rank 0 also to the console.
    argv += ["--max-restarts", str(opts.max_restarts),
             "--log-dir", node_log_dir(opts.log_dir, rdzv.node_rank),
             "--redirects", "3", "--tee", "3", "--local-ranks-filter", "0",
             "-m", "helm_scale.cli", *worker_args]
    return argv
