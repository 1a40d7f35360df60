"""Render the sbatch script of a multi-node SLURM job.

The script asks for N nodes with one task each; srun starts ``python -m
launcher.slurm_node`` on every node, which reads SLURM's environment and execs torchrun
(see slurm_node.py). ``--requeue`` plus ``--signal=B:USR1@S`` make a job that nears its
time limit stop its workers (they save a checkpoint on SIGTERM), requeue itself and
resume from that checkpoint when it runs again.

Two quoting rules, because two different parsers read the script: the shell body uses
shlex.quote; ``#SBATCH`` lines are read by sbatch itself, which knows quotes and
backslash escapes but no shell syntax (src/sbatch/opt.c, _get_argument), so values there
are double-quoted with backslash escapes. Newlines are refused everywhere.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from launcher.job import LaunchError

_PLAIN = re.compile(r"[\w@%+=:,./-]+")
_TIME = re.compile(r"\d+(-\d+)?(:\d+){0,2}")


@dataclass(frozen=True)
class SlurmSpec:
    nodes: int
    procs_per_node: int
    gpus_per_node: int            # GPUs to request per node (0: none, e.g. a CPU partition)
    job_name: str
    workdir: str                  # absolute; the job runs from here, as the submitting shell did
    repo_root: str                # put on PYTHONPATH so `-m launcher.slurm_node` imports on the nodes
    output: str                   # absolute path of SLURM's log file, %j = job id
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    signal_seconds: int = 300     # USR1 this long before the time limit
    extra_directives: tuple[str, ...] = ()  # e.g. "--qos=high"

    def check(self) -> None:
        if self.nodes < 1 or self.procs_per_node < 1 or self.gpus_per_node < 0:
            raise LaunchError("need --nodes >= 1, --procs-per-node >= 1 and --gpus-per-node >= 0")
        if self.time is not None and not _TIME.fullmatch(self.time):
            raise LaunchError(f"--time {self.time!r} is not a SLURM time (MINUTES, HH:MM:SS or D-HH:MM:SS)")
        if self.signal_seconds < 1:
            raise LaunchError(f"--signal-seconds must be >= 1, got {self.signal_seconds}")
        for d in self.extra_directives:
            if not re.fullmatch(r"--[a-z][a-z-]*(=.*)?", d, re.DOTALL):
                raise LaunchError(f"--sbatch-option {d!r} is not of the form --name or --name=value")


def _no_newline(value: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise LaunchError(f"{value!r}: a newline or NUL cannot be passed into a job script")
    return value


def sbatch_quote(value: str) -> str:
    """Quote a value for an #SBATCH line the way sbatch's own parser reads it back."""
    if _PLAIN.fullmatch(_no_newline(value)):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sh_quote(value: str) -> str:
    return shlex.quote(_no_newline(value))


def _directives(s: SlurmSpec) -> list[str]:
    pairs: list[tuple[str, str | None]] = [("job-name", s.job_name), ("nodes", str(s.nodes)), ("ntasks-per-node", "1")]
    if s.gpus_per_node:
        pairs.append(("gpus-per-node", str(s.gpus_per_node)))
    if s.cpus_per_task:
        pairs.append(("cpus-per-task", str(s.cpus_per_task)))
    pairs += [(k, v) for k, v in (("time", s.time), ("partition", s.partition), ("account", s.account)) if v]
    pairs += [("output", s.output), ("open-mode", "append"), ("requeue", None),
              ("signal", f"B:USR1@{s.signal_seconds}")]
    for d in s.extra_directives:
        name, sep, value = d[2:].partition("=")
        pairs.append((name, value if sep else None))
    return [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={sbatch_quote(v)}" for k, v in pairs]


def _command_lines(srun: list[str], node_command: list[str]) -> str:
    """srun, the node command and its worker arguments on lines of their own."""
    cut = node_command.index("--") if "--" in node_command else len(node_command)
    parts = [srun, node_command[:cut], node_command[cut:]]
    return " \\\n    ".join(" ".join(sh_quote(a) for a in part) for part in parts if part) + " &"


def render_sbatch(s: SlurmSpec, env: dict[str, str], node_command: list[str]) -> str:
    s.check()
    srun = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if s.cpus_per_task:
        # srun no longer inherits sbatch's --cpus-per-task (SLURM >= 22.05): without it
        # torchrun and every worker of a node would share one core.
        srun.append(f"--cpus-per-task={s.cpus_per_task}")
    exports = [f"export {k}={sh_quote(v)}" for k, v in env.items()]
    return "\n".join([
        "#!/bin/bash",
        *_directives(s),
        "",
        "# Written by `helm-scale launch slurm`. SLURM keeps this script with the job, so a",
        "# requeued job runs it again and the trainer resumes from its newest checkpoint.",
        "set -uo pipefail",
        f"cd {sh_quote(s.workdir)}",
        f"export PYTHONPATH={sh_quote(s.repo_root)}${{PYTHONPATH:+:$PYTHONPATH}}",
        *exports,
        "",
        f"# USR1 reaches this shell {s.signal_seconds} s before the time limit (--signal=B:...):",
        "# srun passes SIGTERM on to torchrun and the workers, which save a checkpoint and",
        "# exit; the job then goes back to the queue and resumes when it runs again.",
        "srun_pid=''",
        "requeue=0",
        "on_usr1() {",
        "    requeue=1",
        '    echo "helm-scale: time limit near: stopping the workers, then requeueing job $SLURM_JOB_ID" >&2',
        '    [ -n "$srun_pid" ] && kill -TERM "$srun_pid"',
        "}",
        "trap on_usr1 USR1",
        "",
        "# One task per node; each runs torchrun for its node's workers.",
        _command_lines(srun, node_command),
        "srun_pid=$!",
        'wait "$srun_pid"; status=$?',
        'if [ "$requeue" = 1 ]; then',
        '    wait "$srun_pid"; status=$?  # the trap cut the first wait short: srun\'s own status',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$status"',
        "",
    ])
