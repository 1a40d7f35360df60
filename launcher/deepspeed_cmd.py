"""The DeepSpeed launcher with a hostfile (``host slots=N`` per line), for clusters reached by ssh.

DeepSpeed's runner starts every node through pdsh and a remote shell, and quotes what it
passes there only loosely (arguments with spaces in double quotes, environment values
as they are). So when any host is remote, every value that would travel that way must be
plain (letters, digits, ``@%+=:,./-_``); anything else is refused instead of being run as
code on the remote nodes. It has no automatic restarts: use the torchrun or slurm
targets for those.
"""
from __future__ import annotations

import re
from pathlib import Path

from launcher.job import LaunchError

LOCAL_HOSTS = ("localhost", "127.0.0.1")
_SAFE = re.compile(r"[\w@%+=:,./-]*")


def read_hostfile(path: str) -> dict[str, int]:
    """host -> slots, in file order, parsed like deepspeed.launcher.runner does."""
    p = Path(path)
    if not p.is_file():
        raise LaunchError(f"hostfile {path} does not exist")
    hosts: dict[str, int] = {}
    for n, raw in enumerate(p.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+)\s+slots=(\d+)", line)
        if not m:
            raise LaunchError(f"{path}:{n}: {line!r} is not 'HOST slots=N'")
        if m.group(1) in hosts:
            raise LaunchError(f"{path}:{n}: host {m.group(1)} is listed twice")
        hosts[m.group(1)] = int(m.group(2))
    if not hosts:
        raise LaunchError(f"hostfile {path} lists no host")
    return hosts


def is_remote(hosts: dict[str, int]) -> bool:
    return len(hosts) > 1 or next(iter(hosts)) not in LOCAL_HOSTS


def check_plain(values: dict[str, str]) -> None:
    """Refuse values that DeepSpeed's pdsh path would hand to a remote shell unquoted."""
    for what, value in values.items():
        if not _SAFE.fullmatch(value):
            raise LaunchError(
                f"{what} {value!r} has characters that DeepSpeed's multi-node launcher would pass "
                "to a remote shell unquoted; use plain values, or the torchrun / slurm targets")


def deepspeed_argv(python: str, hostfile: str, hosts: dict[str, int], master_addr: str, master_port: int,
                   nproc_per_node: int | None, log_dir: str, worker_args: list[str]) -> list[str]:
    argv = [python, "-m", "deepspeed.launcher.runner", "--hostfile", hostfile,
            "--master_addr", master_addr, "--master_port", str(master_port)]
    if not is_remote(hosts):
        argv.append("--no_ssh_check")  # it would ssh to localhost first, even for one local host
    if nproc_per_node is not None:
        argv += ["--num_gpus", str(nproc_per_node)]
    # --no_local_rank: our CLI takes no --local_rank (LOCAL_RANK is in the environment).
    return argv + ["--enable_each_rank_log", log_dir, "--no_local_rank", "--module", "helm_scale.cli", *worker_args]
