"""Real ``torchrun`` training jobs from tests: start, watch, kill, and read their losses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def start(run_dir: Path, nproc: int, overrides: list[str], config: str = TINY) -> subprocess.Popen:
    """torchrun in its own session, logging to RUN_DIR.log next to the run directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "helm_scale.cli", "train", config, f"run.run_dir={run_dir}", *overrides]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _job_pids(pid: int) -> list[int]:
    """torchrun and all its descendants (torchrun starts each worker in a new session, so
    killing torchrun's process group alone would leave the workers running)."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            pids += children
            frontier += children
    return pids


def kill_job(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    for pid in _job_pids(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def run(run_dir: Path, nproc: int, overrides: list[str], timeout: float = 300) -> int:
    proc = start(run_dir, nproc, overrides)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            kill_job(proc)


def losses(run_dir: Path) -> dict[int, float]:
    """Training loss per step from metrics.jsonl; a step logged again after a resume
    keeps its latest value."""
    out = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "train":
                out[record["step"]] = record["loss"]
    return out


def interrupt_at(run_dir: Path, nproc: int, overrides: list[str], step: int, sig: int,
                 whole_job: bool, timeout: float = 300) -> int:
    """Start a job and send ``sig`` once it has logged ``step``: to every process of the
    job, torchrun and workers (a crash), or to torchrun alone (as a scheduler does). Returns the exit code."""
    proc = start(run_dir, nproc, overrides)
    deadline = time.monotonic() + timeout
    try:
        while max(losses(run_dir), default=0) < step:
            if proc.poll() is not None:
                raise AssertionError(f"the job ended (code {proc.returncode}) before step {step}; "
                                     f"see {run_dir.parent / (run_dir.name + '.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no step {step} within {timeout} s")
            time.sleep(0.005)
        if whole_job:
            kill_job(proc, sig)
        else:
            proc.send_signal(sig)
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            kill_job(proc)
