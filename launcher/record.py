"""Show a launch (--dry-run), record it in the run directory (launch.json), or start it."""
from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import sys
from pathlib import Path

# Variables worth keeping in launch.json: what shapes a distributed run, nothing secret.
RECORDED_PREFIXES = ("SLURM_", "NCCL_", "TORCH_", "PET_", "MASTER_", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                     "PYTHONPATH", "PYTHONUNBUFFERED", "DS_")


def show(commands: list[list[str]], env: dict[str, str], files: dict[str, str] | None = None) -> str:
    """Shell-readable text of a launch; every value is quoted, so it can be pasted."""
    lines = []
    if env:
        lines += ["# environment", *(f"export {k}={shlex.quote(v)}" for k, v in env.items()), ""]
    for name, text in (files or {}).items():
        lines += [f"# file {name}", text.rstrip("\n"), ""]
    lines += ["# command" + ("s" if len(commands) > 1 else "")] + [shlex.join(c) for c in commands]
    return "\n".join(lines) + "\n"


def write_record(path: Path, target: str, commands: list[list[str]], env: dict[str, str], **extra) -> Path:
    environment = {k: v for k, v in sorted(os.environ.items()) if k.startswith(RECORDED_PREFIXES)}
    environment.update(env)
    record = {"argv": sys.argv, "target": target, "commands": commands, "environment": environment,
              "hostname": socket.gethostname(), "cwd": os.getcwd(),
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    return path


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    """Become the command: signals (Ctrl-C, a scheduler's SIGTERM) reach torchrun directly and
    its exit status is the launch's."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, {**os.environ, **env})
    except OSError as e:
        print(f"helm-scale launch: cannot run {argv[0]}: {e}", file=sys.stderr)
        sys.exit(127)
