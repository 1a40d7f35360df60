"""The SLURM target without SLURM: the rendered script is pinned by a golden file, checked
by bash and by a port of sbatch's own directive parser, and run under bash with fake
``srun`` / ``scontrol`` executables on PATH; the node entry point runs in a simulated
SLURM environment."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helm_scale.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
GOLDEN = Path(__file__).parent / "golden" / "slurm_job.sbatch"
EVIL = "$(touch pwned)"

FAKE_SCONTROL = """#!/bin/bash
# SLURM stand-in: expands any node list to the hosts in FAKE_HOSTS; logs requeues.
echo "$*" >> "$FAKE_LOG/scontrol.log"
if [ "$1 $2" = "show hostnames" ]; then printf '%s\\n' $FAKE_HOSTS; fi
"""
FAKE_SRUN = """#!/bin/bash
# SLURM stand-in: records its arguments (NUL-separated); in 'wait' mode runs until SIGTERM.
printf '%s\\0' "$@" > "$FAKE_LOG/srun.argv"
if [ "${FAKE_SRUN_MODE:-}" = wait ]; then
    trap 'echo TERM > "$FAKE_LOG/srun.signal"; kill $sleeper 2>/dev/null; exit 143' TERM
    sleep 60 & sleeper=$!
    wait $sleeper
fi
exit 0
"""
FAKE_SBATCH = """#!/bin/bash
# SLURM stand-in: accepts the job, prints its id the way --parsable does.
printf '%s\\0' "$@" > "$FAKE_LOG/sbatch.argv"
echo "5678;cluster"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """PATH and environment of a simulated two-node SLURM job (job 1234 on node-a, node-b)."""
    bin_dir, log = tmp_path / "fake-bin", tmp_path / "fake-log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN), ("sbatch", FAKE_SBATCH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log), FAKE_HOSTS="node-a node-b",
               SLURM_JOB_ID="1234", SLURM_NNODES="2", SLURM_JOB_NODELIST="node-[a-b]", SLURM_GPUS_ON_NODE="4")
    return env, log


def _render(capsys, *argv) -> str:
    assert main(["launch", "slurm", "--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    return out[out.index("#!/bin/bash"):out.index("\n# command")]


def _sbatch_arguments(line: str) -> list[str]:
    """Arguments of one #SBATCH line, read as sbatch reads them (src/sbatch/opt.c,
    _get_argument): quotes group, a backslash escapes the next character, an
    unquoted # starts a comment."""
    args, i, n = [], 0, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i == n:
            return args
        arg, quote, escaped = [], None, False
        while i < n and (quote or not line[i].isspace()):
            c = line[i]
            i += 1
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
                continue
            elif quote:
                if c == quote:
                    quote = None
                    continue
            elif c in "\"'":
                quote = c
                continue
            elif c == "#":
                i = n
                break
            arg.append(c)
        args.append("".join(arg))


GOLDEN_ARGS = ["--nodes", "2", "--gpus-per-node", "4", "--cpus-per-task", "16", "--time", "2-00:00:00",
               "--partition", "gpu", "--account", "bio-lm", "--job-name", "helm 20m", "--sbatch-option=--qos=high",
               "--python", "/opt/venv/bin/python", TINY, "run.run_dir=/scratch/helm runs/20m",
               "data.dataset_dir=/scratch/shards"]


def test_rendered_script_matches_the_golden_file(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    script = _render(capsys, *GOLDEN_ARGS).replace(str(ROOT), "<repo>")
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), "rendered sbatch script changed; UPDATE_GOLDEN=1 rewrites the golden file"


def test_rendered_script_passes_bash_n(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    script = tmp_path / "job.sbatch"
    script.write_text(_render(capsys, *GOLDEN_ARGS))
    done = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_hostile_values_stay_data_in_directives_and_in_the_shell(capsys, monkeypatch, tmp_path, fake_slurm):
    env, log = fake_slurm
    work = tmp_path / "work dir"
    work.mkdir()
    monkeypatch.chdir(work)
    job_name = f"x {EVIL} \"q\" 'a' \\ #c"
    run_dir = f"a b/{EVIL}"
    script = tmp_path / "job.sbatch"
    script.write_text(_render(capsys, "--nodes", "2", "--job-name", job_name, "--partition", "p;rm -rf ~",
                              "--env", f"NOTE=it's {EVIL}", TINY, f"run.run_dir={run_dir}"))

    directives = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH"):
            [arg] = _sbatch_arguments(line[len("#SBATCH"):])
            key, _, value = arg.partition("=")
            directives[key] = value
    assert directives["--job-name"] == job_name and directives["--partition"] == "p;rm -rf ~"
    assert directives["--output"] == f"{work}/{run_dir}/logs/slurm-%j.out"

    done = subprocess.run(["bash", str(script)], check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not [p for p in tmp_path.rglob("pwned")], "a value was executed as code"
    srun = (log / "srun.argv").read_text().split("\0")[:-1]
    node = srun[srun.index("launcher.slurm_node") - 2:]
    assert srun[:srun.index(sys.executable)] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert node[node.index("--log-dir") + 1] == f"{work}/{run_dir}/logs"
    assert node[node.index("--"):] == ["--", "train", TINY, f"run.run_dir={run_dir}"]
    exported = subprocess.run(["bash", "-c", (f"source <(grep '^export ' {shlex.quote(str(script))}); "
                               "printf '%s' \"$NOTE\"")], check=False, capture_output=True, text=True)
    assert exported.stdout == f"it's {EVIL}"

    # What srun would start on node 1, run in the simulated job: the values reach torchrun intact.
    node_env = dict(env, SLURM_NODEID="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([*node[:3], "--dry-run", *node[3:]], check=False, env=node_env, cwd=work, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    torchrun = shlex.split(out.stdout.strip().splitlines()[-1])
    assert torchrun[-3:] == ["train", TINY, f"run.run_dir={run_dir}"]
    assert torchrun[torchrun.index("--log-dir") + 1] == f"{work}/{run_dir}/logs/node1"


@pytest.mark.parametrize("node_id", [0, 1])
def test_node_entry_point_takes_ranks_and_rendezvous_from_slurm(node_id, fake_slurm, tmp_path):
    env, log = fake_slurm
    env = dict(env, SLURM_NODEID=str(node_id), SLURM_RESTART_COUNT="2")
    done = subprocess.run([sys.executable, "-m", "launcher.slurm_node", "--dry-run", "--rdzv-port", "29555",
                           "--max-restarts", "4", "--log-dir", str(tmp_path / "logs"), "--", "train", TINY], check=False,
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout.strip().splitlines()[-1])
    flags = dict(zip(argv[3:argv.index("-m", 3)][::2], argv[3:argv.index("-m", 3)][1::2]))
    assert flags == {"--nnodes": "2", "--nproc-per-node": "4", "--rdzv-backend": "c10d",
                     "--rdzv-endpoint": "node-a:29555", "--rdzv-id": "slurm-1234",
                     "--rdzv-conf": f"is_host={int(node_id == 0)}", "--max-restarts": "4",
                     "--log-dir": str(tmp_path / "logs" / f"node{node_id}"), "--redirects": "3", "--tee": "3",
                     "--local-ranks-filter": "0"}
    assert argv[argv.index("-m", 3):] == ["-m", "helm_scale.cli", "train", TINY]
    assert f"node {node_id}/2" in done.stderr and "requeue 2" in done.stderr
    assert (log / "scontrol.log").read_text().split() == ["show", "hostnames", "node-[a-b]"]


def test_node_entry_point_outside_slurm_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-m", "launcher.slurm_node", "--log-dir", str(tmp_path), "--",
                           "train", TINY], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "SLURM_JOB_ID is not set" in done.stderr


def test_usr1_before_the_time_limit_stops_the_workers_and_requeues(capsys, monkeypatch, tmp_path, fake_slurm):
    env, log = fake_slurm
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "job.sbatch"
    script.write_text(_render(capsys, "--nodes", "2", TINY, f"run.run_dir={tmp_path}/run"))
    shell = subprocess.Popen(["bash", str(script)], env=dict(env, FAKE_SRUN_MODE="wait"), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (log / "srun.argv").exists():
            assert time.monotonic() < deadline and shell.poll() is None, "srun never started"
            time.sleep(0.05)
        time.sleep(0.2)  # let the fake srun install its trap
        shell.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@S does near the time limit
        _, err = shell.communicate(timeout=30)
    finally:
        if shell.poll() is None:
            shell.kill()
    assert (log / "srun.signal").read_text().strip() == "TERM"
    assert "requeue 1234" in (log / "scontrol.log").read_text().splitlines()
    assert shell.returncode == 143 and "requeueing job 1234" in err


def test_finished_job_is_not_requeued(capsys, monkeypatch, tmp_path, fake_slurm):
    env, log = fake_slurm
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "job.sbatch"
    script.write_text(_render(capsys, "--nodes", "2", TINY, f"run.run_dir={tmp_path}/run"))
    done = subprocess.run(["bash", str(script)], check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (log / "scontrol.log").exists()


def test_submission_without_sbatch_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    monkeypatch.chdir(tmp_path)
    assert main(["launch", "slurm", "--nodes", "1", TINY]) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err


def test_submission_writes_the_script_and_records_the_job(capsys, monkeypatch, tmp_path, fake_slurm):
    env, log = fake_slurm
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    shown = _render(capsys, "--nodes", "2", TINY, f"run.run_dir={run_dir}")
    assert main(["launch", "slurm", "--nodes", "2", TINY, f"run.run_dir={run_dir}"]) == 0
    assert "submitted job 5678" in capsys.readouterr().out
    assert (run_dir / "job.sbatch").read_text() == shown  # what --dry-run showed is what was submitted
    assert (log / "sbatch.argv").read_text().split("\0")[:-1] == ["--parsable", str(run_dir / "job.sbatch")]
    record = json.loads((run_dir / "launch.json").read_text())
    assert record["target"] == "slurm" and record["job_id"] == "5678"
    assert (run_dir / "logs").is_dir()  # SLURM does not create the directory of --output
