"""Real jobs through ``helm-scale launch`` on loopback: a two-node torchrun job (two launcher
invocations, one worker each), the same job with a worker SIGKILLed mid-run (torchrun
restarts the group, the trainer resumes from its checkpoint and ends where the
uninterrupted run ended), and a hung worker that ends the job within the collective
timeout with a line naming the rank and the operation."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dist_utils import free_port, run_ranks
from tests.torchrun_utils import kill_job, losses

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
STEPS = 12
SHORT = [f"schedule.max_steps={STEPS}", "schedule.warmup_steps=2", "run.log_interval=1", "run.eval_interval=0",
         "run.eval_batches=2", "run.checkpoint_interval=2", "run.tensorboard=false", "data.micro_batch_size=4",
         "data.seq_len=64", "data.num_workers=0"]


def _launch(target_args: list[str], run_dir: Path, dataset: str, console: Path, overrides=()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "helm_scale.cli", "launch", *target_args, TINY,
           f"data.dataset_dir={dataset}", f"run.run_dir={run_dir}", *SHORT, *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=console.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _two_nodes(run_dir: Path, dataset: str) -> list[subprocess.Popen]:
    port = free_port()
    return [_launch(["torchrun", "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}",
                     "--rdzv-id", run_dir.name, "--nproc-per-node", "1", "--max-restarts", "2",
                     "--stop-grace", "10", "--collective-timeout", "60"],
                    run_dir, dataset, run_dir.parent / f"{run_dir.name}-node{rank}.console")
            for rank in (0, 1)]


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(deadline - time.monotonic(), 0.1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_job(p)


def _logs(run_dir: Path, name: str = "stdout.log") -> str:
    """Every per-rank log of every node and attempt, concatenated."""
    return "".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").rglob(name)))


def _descendants(pid: int) -> list[int]:
    out, frontier = [], [pid]
    while frontier:
        for task in Path(f"/proc/{frontier.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += children
            frontier += children
    return out


def _worker(agent: subprocess.Popen, local_rank: int = 0) -> int:
    """The pid of the training worker with this local rank under a launcher (= torchrun) process."""
    for pid in _descendants(agent.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"helm_scale.cli" in cmdline and f"LOCAL_RANK={local_rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker with local rank {local_rank} under {agent.pid}")


def _wait_for_step(run_dir: Path, step: int, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while max(losses(run_dir), default=0) < step:
        assert all(p.poll() is None for p in procs), "the job ended early"
        assert time.monotonic() < deadline, f"no step {step} within {timeout} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(synthetic_dataset, tmp_path_factory):
    """An uninterrupted two-node job: its run directory."""
    run_dir = tmp_path_factory.mktemp("two-nodes") / "run"
    codes = _wait(_two_nodes(run_dir, synthetic_dataset), timeout=300)
    assert codes == [0, 0], _logs(run_dir, "stderr.log")[-3000:]
    return run_dir


def test_two_launchers_make_one_two_node_job(reference):
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["train"]["loss"] > 0
    for rank, record in ((0, "launch.json"), (1, "launch-node1.json")):
        launch = json.loads((reference / record).read_text())
        assert launch["target"] == "torchrun" and "--node-rank" in launch["argv"]
        assert launch["environment"]["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
        logs = list((reference / "logs" / f"node{rank}").glob("*/attempt_0/0/stdout.log"))
        assert len(logs) == 1, f"node {rank} has no per-rank log"
    assert "world 2 = TP 1 x DP 2" in _logs(reference)
    assert sorted(losses(reference)) == list(range(1, STEPS + 1))


def test_killed_worker_restarts_resumes_and_ends_as_uninterrupted(reference, synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    procs = _two_nodes(run_dir, synthetic_dataset)
    try:
        _wait_for_step(run_dir, 5, procs)  # checkpoints at 2 and 4 are down
        os.kill(_worker(procs[1]), signal.SIGKILL)
    finally:
        codes = _wait(procs, timeout=300)
    assert codes == [0, 0], _logs(run_dir, "stderr.log")[-3000:]
    assert list((run_dir / "logs" / "node1").glob("*/attempt_1/0/stdout.log")), "node 1 did not restart its worker"
    assert re.search(r"resumed from .+ \(step \d+\)", _logs(run_dir)), "the restarted workers did not resume"
    summary, expected = json.loads((run_dir / "summary.json").read_text()), json.loads(
        (reference / "summary.json").read_text())
    assert summary["train"]["loss"] == expected["train"]["loss"]
    assert losses(run_dir) == losses(reference)


def test_a_hung_worker_ends_the_job_within_the_collective_timeout(synthetic_dataset, tmp_path):
    run_dir, console = tmp_path / "run", tmp_path / "console.log"
    proc = _launch(["local", "--nproc-per-node", "2", "--max-restarts", "0", "--stop-grace", "2",
                    "--collective-timeout", "5"], run_dir, synthetic_dataset, console)
    pattern = re.compile(r"rank 0: .+ timed out after 5 s: another rank is hung or dead.*")
    stopped, line = None, None
    try:
        _wait_for_step(run_dir, 3, [proc])
        stopped = _worker(proc, local_rank=1)
        os.kill(stopped, signal.SIGSTOP)  # hung, not dead: its sockets stay open
        started = time.monotonic()
        while line is None and time.monotonic() - started < 60:
            line = pattern.search(_logs(run_dir, "stderr.log"))
            time.sleep(0.1)
        reported = time.monotonic() - started
        code = proc.wait(timeout=90)
        ended = time.monotonic() - started
    finally:
        if stopped:
            try:
                os.kill(stopped, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            kill_job(proc)
    assert line, _logs(run_dir, "stderr.log")[-2000:]
    assert reported < 5 + 10, f"rank 0 reported the hang after {reported:.0f} s"
    # torchrun then stops the group; a worker that ignores SIGTERM (here: stopped) is
    # SIGKILLed after torchrun's fixed 30 s.
    assert code != 0 and ended < 5 + 30 + 15, f"the job took {ended:.0f} s to end"
    assert line.group(0) in console.read_text()  # rank 0's log reaches the console too


def _timeout_on_a_hung_peer(rank, world_size):
    import datetime

    import torch
    import torch.distributed as dist

    from helm_scale.parallel.errors import collective_failure
    group = dist.new_group(timeout=datetime.timedelta(seconds=2))
    line = None
    if rank == 0:
        try:
            dist.all_reduce(torch.ones(3), group=group)
        except RuntimeError as e:
            line = collective_failure(e, rank)
    else:
        time.sleep(4)  # never joins the all_reduce
    return line


def test_collective_failure_on_a_real_gloo_timeout():
    line, _ = run_ranks(_timeout_on_a_hung_peer, 2)
    assert line and line.startswith("rank 0: all_reduce timed out after 2 s: another rank is hung or dead")


def test_deepspeed_target_trains_on_one_local_host(synthetic_dataset, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\n")
    run_dir = tmp_path / "run"
    proc = _launch(["deepspeed", "--hostfile", str(hostfile), "--master-port", str(free_port())], run_dir,
                   synthetic_dataset, tmp_path / "console.log", ["parallel.backend=deepspeed", "parallel.zero_stage=1", "run.checkpoint_interval=0"])
    assert _wait([proc], timeout=300) == [0], (tmp_path / "console.log").read_text()[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == STEPS
    assert json.loads((run_dir / "launch.json").read_text())["target"] == "deepspeed"
    assert len(list((run_dir / "logs" / "deepspeed").glob("*_rank*.log"))) == 2
