"""helm-scale launch: help, input checks, dry runs and what they print; no process is started."""
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helm_scale.cli import main
from launcher.job import read_job
from launcher.plan import Options, Rendezvous, torchrun_argv
from launcher.record import write_record

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
TARGETS = ["local", "torchrun", "slurm", "deepspeed"]


def _command(out: str) -> list[str]:
    """The (last) command a dry run prints, split back into its arguments."""
    return shlex.split(out.strip().splitlines()[-1])


def test_launching_imports_neither_torch_nor_the_trainer(tmp_path):
    code = ("import sys; from helm_scale.cli import main; "
            f"rc = main(['launch', 'slurm', '--nodes', '2', '--dry-run', {TINY!r}, 'run.run_dir={tmp_path}']); "
            "import launcher.slurm_node, launcher.deepspeed_cmd; "
            "heavy = [m for m in ('torch', 'deepspeed', 'megatron', 'helm_scale.trainer') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_help_for_launch_and_every_target(capsys):
    with pytest.raises(SystemExit) as e:
        main(["launch", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(t in out for t in TARGETS)
    for target in TARGETS:
        with pytest.raises(SystemExit) as e:
            main(["launch", target, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "--dry-run" in out and "config" in out, target


@pytest.mark.parametrize("argv, message", [
    (["local", "--nproc-per-node", "3", TINY, "parallel.tensor_parallel=2"],
     "1 node(s) x 3 process(es) = 3 processes is not a multiple of parallel.tensor_parallel 2"),
    (["torchrun", "--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "h:1", "--nproc-per-node", "3", TINY,
      "parallel.tensor_parallel=4"], "2 node(s) x 3 process(es) = 6 processes is not a multiple"),
    (["slurm", "--nodes", "3", TINY, "parallel.tensor_parallel=2"], "3 node(s) x 1 process(es) = 3 processes"),
    (["local", "does/not/exist.yaml"], "config file does/not/exist.yaml does not exist"),
    (["local", TINY, "parallel.tensor_parallel=zero"], "parallel.tensor_parallel must be int, got 'zero'"),
    (["local", TINY, "parallel.tensor_parallel=0"], "tensor_parallel must be an int >= 1"),
    (["local", TINY, "model.hidden_size=-1"], "ModelConfig.hidden_size must be a positive int"),
    (["local", TINY, "notanoverride"], "is not of the form section.key=value"),
    (["local", "--nproc-per-node", "0", TINY], "need at least one node and one process per node"),
    (["torchrun", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:29500", TINY],
     "node rank 2 is outside 0..1"),
    (["torchrun", "--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "h", TINY], "is not HOST:PORT"),
    (["local", "--collective-timeout", "-1", TINY], "--collective-timeout must be >= 0"),
    (["local", "--max-restarts", "-1", TINY], "--max-restarts must be >= 0"),
    (["slurm", "--nodes", "1", "--job-name", "a\nb", TINY], "a newline or NUL cannot be passed"),
    (["slurm", "--nodes", "1", "--time", "tomorrow", TINY], "is not a SLURM time"),
    (["slurm", "--nodes", "1", "--sbatch-option", "qos=high", TINY], "is not of the form --name"),
    (["slurm", "--nodes", "1", "--signal-seconds", "30", TINY], "--stop-grace 60 must be below --signal-seconds 30"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["launch", *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [
    ["launch", "mars", TINY],                                  # unknown target
    ["launch", "local", "--nproc-per-node", "two", TINY],      # not a number
    ["launch", "local", "--env", "NO_EQUALS_SIGN", TINY],
    ["launch", "torchrun", TINY],                              # --nnodes etc. missing
])
def test_malformed_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_local_dry_run_prints_the_torchrun_command_and_starts_nothing(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["launch", "local", "--nproc-per-node", "2", "--dry-run", "--nccl-debug", "WARN",
                 "--env", "FOO=bar baz", TINY, f"run.run_dir={run_dir}", "optim.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    argv = _command(out)
    assert argv[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in argv
    assert argv[argv.index("--nproc-per-node") + 1] == "2" and argv[argv.index("--max-restarts") + 1] == "3"
    assert argv[argv.index("--log-dir") + 1] == f"{run_dir}/logs/node0"
    assert argv[argv.index("--local-ranks-filter") + 1] == "0"
    assert argv[argv.index("-m", 3):] == ["-m", "helm_scale.cli", "train", TINY, f"run.run_dir={run_dir}",
                                          "optim.lr=1e-3"]
    for line in ("export NCCL_DEBUG=WARN", "export FOO='bar baz'", "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
                 "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=60"):
        assert line in out.splitlines()
    assert not run_dir.exists()


@pytest.mark.parametrize("flags, overrides, expected", [
    ([], [], None),                           # the config's (here the default, 600 s)
    (["--collective-timeout", "30"], [], "parallel.timeout_s=30"),
    (["--collective-timeout", "30"], ["parallel.timeout_s=90"], "parallel.timeout_s=30"),
    ([], ["parallel.timeout_s=90"], None),    # the config's own value stands
    (["--collective-timeout", "0"], [], None),  # the config's
])
def test_collective_timeout_reaches_the_trainer_as_an_override(flags, overrides, expected, capsys):
    assert main(["launch", "local", "--dry-run", *flags, TINY, *overrides]) == 0
    worker = _command(capsys.readouterr().out)
    worker = worker[worker.index("train"):]
    added = worker[2 + len(overrides):]
    assert added == ([expected] if expected else [])


def test_torchrun_dry_run_names_the_rendezvous(capsys):
    base = ["launch", "torchrun", "--nnodes", "2", "--rdzv-endpoint", "10.0.0.1:29400", "--nproc-per-node", "4",
            "--max-restarts", "5", "--dry-run", TINY, "parallel.tensor_parallel=2"]
    for rank in (0, 1):
        assert main([*base[:2], "--node-rank", str(rank), *base[2:]]) == 0
        argv = _command(capsys.readouterr().out)
        flags = dict(zip(argv[3:argv.index("-m", 3)][::2], argv[3:argv.index("-m", 3)][1::2]))
        assert flags["--nnodes"] == "2" and flags["--nproc-per-node"] == "4" and flags["--max-restarts"] == "5"
        assert flags["--rdzv-backend"] == "c10d" and flags["--rdzv-endpoint"] == "10.0.0.1:29400"
        assert flags["--rdzv-id"] == "helm-tiny" and flags["--rdzv-conf"] == f"is_host={int(rank == 0)}"
        assert flags["--log-dir"] == f"runs/tiny/logs/node{rank}"


def test_deepspeed_dry_run_uses_the_hostfile(capsys, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two nodes\nnode-a slots=4\nnode-b slots=4\n")
    assert main(["launch", "deepspeed", "--hostfile", str(hostfile), "--dry-run", TINY, "parallel.tensor_parallel=8",
                 f"run.run_dir={tmp_path}/run"]) == 0
    out = capsys.readouterr().out
    argv = _command(out)
    assert argv[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert argv[argv.index("--hostfile") + 1] == str(hostfile) and argv[argv.index("--master_addr") + 1] == "node-a"
    assert "--no_local_rank" in argv and argv[argv.index("--module") + 1] == "helm_scale.cli"
    assert "--no_ssh_check" not in argv
    assert f"export DS_ENV_FILE={tmp_path}/run/deepspeed_env" in out  # remote nodes get the environment
    # 2 hosts x 4 slots = 8, not a multiple of TP 3
    assert main(["launch", "deepspeed", "--hostfile", str(hostfile), "--dry-run", TINY,
                 "parallel.tensor_parallel=3"]) == 2


def test_deepspeed_refuses_values_its_remote_shell_would_run(capsys, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    code = main(["launch", "deepspeed", "--hostfile", str(hostfile), "--dry-run", TINY, "run.run_dir=a b/$(touch x)"])
    assert code == 2 and "pass to a remote shell unquoted" in capsys.readouterr().err
    hostfile.write_text("localhost slots=2\n")  # one local host: no shell in between, any value is fine
    assert main(["launch", "deepspeed", "--hostfile", str(hostfile), "--dry-run", TINY, "run.run_dir=a b/$(x)"]) == 0
    argv = _command(capsys.readouterr().out)
    assert "--no_ssh_check" in argv and argv[argv.index("--master_addr") + 1] == "127.0.0.1"


def test_read_job_loads_the_trainers_config_from_yaml_and_overrides(tmp_path):
    from helm_scale.train_config import load_train_config
    overrides = ["parallel.tensor_parallel=2", f"run.run_dir={tmp_path}", "parallel.timeout_s=45"]
    job = read_job(TINY, overrides)
    assert (job.tensor_parallel, job.run_dir, job.train.parallel.timeout_s) == (2, str(tmp_path), 45.0)
    assert job.train == load_train_config(TINY, overrides)


def test_launch_record(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("MY_SECRET_TOKEN", "hunter2")
    cmd = torchrun_argv(Rendezvous(1, 2), Options(python="python", log_dir="logs"), ["train", TINY])
    path = write_record(tmp_path / "launch.json", "local", [cmd], {"NCCL_DEBUG": "INFO"})
    rec = json.loads(path.read_text())
    assert rec["target"] == "local" and rec["commands"] == [cmd] and rec["hostname"] and rec["time"]
    assert rec["environment"]["SLURM_JOB_ID"] == "77" and rec["environment"]["NCCL_DEBUG"] == "INFO"
    assert "MY_SECRET_TOKEN" not in rec["environment"] and isinstance(rec["argv"], list)


def _raise_from(tmp_path: Path, filename: str, function: str, message: str) -> RuntimeError:
    """An exception whose traceback passes through ``function`` in a file named like
    ``filename`` (e.g. torch/distributed/distributed_c10d.py), as a real one would."""
    path = tmp_path / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"def {function}():\n    raise RuntimeError({message!r})\n")
    spec = importlib.util.spec_from_file_location(f"fake_{function}_{len(list(tmp_path.rglob('*.py')))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        getattr(module, function)()
    except RuntimeError as e:
        return e
    raise AssertionError("not raised")


def test_collective_failure_names_rank_operation_and_timeout(tmp_path):
    from helm_scale.parallel.errors import collective_failure
    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv"
    e = _raise_from(tmp_path, "a/torch/distributed/distributed_c10d.py", "all_reduce", gloo)
    line = collective_failure(e, 3)
    assert line.startswith("rank 3: all_reduce timed out after 5 s: another rank is hung or dead")
    assert "Timed out waiting 5000ms for recv" in line and "unbound_buffer" not in line
    e = _raise_from(tmp_path, "b/torch/autograd/graph.py", "_engine_run_backward", gloo)
    assert collective_failure(e, 0).startswith("rank 0: gradient all-reduce (backward) timed out after 5 s")
    nccl = "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=ALLGATHER, Timeout(ms)=60000)"
    assert collective_failure(RuntimeError(nccl), 1).startswith("rank 1: allgather timed out after 60 s")
    closed = "[pair.cc:553] Connection closed by peer [127.0.0.1]:41697"
    e = _raise_from(tmp_path, "c/torch/distributed/distributed_c10d.py", "barrier", closed)
    assert collective_failure(e, 0).startswith("rank 0: barrier failed: another rank exited or crashed")
    assert collective_failure(RuntimeError("CUDA out of memory"), 0) is None
