"""Real torchrun jobs interrupted and resumed (CPU, gloo, fp32).

Bit-exact: a job killed with SIGKILL at a random step (or stopped with SIGTERM, which
saves on the way out) and started again logs the same loss at every later step as an
uninterrupted job, for DDP, ZeRO-2, ZeRO-3 and TP = 2, with dropout on so that the
restored random streams matter. Elastic: a checkpoint resumed at another DP or TP size
continues with matching loss (relative 1e-5: only the reduction order differs) from the
same place in the global sample order. Exports give the distributed model's logits.
"""
from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

import pytest
import torch

from helm_scale.checkpoint import CheckpointStore
from tests.dist_utils import run_ranks
from tests.torchrun_utils import interrupt_at, losses, run

pytestmark = pytest.mark.slow

BACKENDS = {
    "ddp": [],
    "zero2": ["parallel.backend=deepspeed", "parallel.zero_stage=2"],
    "zero3": ["parallel.backend=deepspeed", "parallel.zero_stage=3"],
    "tp2": ["parallel.tensor_parallel=2"],
}


def _settings(dataset, *extra, steps=30, interval=4):
    return [f"data.dataset_dir={dataset}", "data.num_workers=0", "data.micro_batch_size=8",
            f"schedule.max_steps={steps}", "schedule.warmup_steps=3", f"run.checkpoint_interval={interval}",
            "run.log_interval=1", "run.eval_interval=0", "run.tensorboard=false", *extra]


def _log(run_dir: Path) -> str:
    return (run_dir.parent / f"{run_dir.name}.log").read_text()


@pytest.fixture(scope="module")
def references(tmp_path_factory, synthetic_dataset):
    """Uninterrupted 30-step runs per backend, made once (dropout on)."""
    root = tmp_path_factory.mktemp("reference")
    made = {}

    def reference(name):
        if name not in made:
            run_dir = root / name
            assert run(run_dir, 2, _settings(synthetic_dataset, "model.dropout=0.1", *BACKENDS[name])) == 0, _log(run_dir)
            made[name] = run_dir
        return made[name]
    return reference


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_sigkill_at_a_random_step_then_restart_is_bit_exact(backend, references, synthetic_dataset, tmp_path):
    settings = _settings(synthetic_dataset, "model.dropout=0.1", *BACKENDS[backend])
    expected = losses(references(backend))
    kill_at = random.Random().randint(6, 20)
    run_dir = tmp_path / "run"
    assert interrupt_at(run_dir, 2, settings, kill_at, signal.SIGKILL, whole_job=True) != 0
    reached = max(losses(run_dir))
    assert run(run_dir, 2, settings) == 0, _log(run_dir)
    log = _log(run_dir)
    assert "resuming at step" in log, log
    got = losses(run_dir)
    assert got == expected, f"killed at step {reached} (asked {kill_at}): {got} != {expected}"


def test_sigterm_saves_on_the_way_out_and_resumes_bit_exact(references, synthetic_dataset, tmp_path):
    settings = _settings(synthetic_dataset, "model.dropout=0.1", "run.checkpoint_interval=0")
    run_dir = tmp_path / "run"
    assert interrupt_at(run_dir, 2, settings, 7, signal.SIGTERM, whole_job=False) != 0
    stopped = max(losses(run_dir))
    assert CheckpointStore(run_dir / "checkpoints").steps() == [stopped]  # saved at the step it stopped
    assert "signal 15 received: saved step" in _log(run_dir)
    assert run(run_dir, 2, settings) == 0, _log(run_dir)
    assert losses(run_dir) == losses(references("ddp"))


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(damage, references, synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(references("ddp"), run_dir)
    store = CheckpointStore(run_dir / "checkpoints")
    assert store.steps() == [28, 30]
    victim = max((p for p in store.path(30).rglob("*.distcp")), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(data)
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(metrics[:28]) + "\n")  # the log as of step 28
    assert run(run_dir, 2, _settings(synthetic_dataset, "model.dropout=0.1")) == 0, _log(run_dir)
    log = _log(run_dir)
    assert "step-00000030 is damaged and skipped" in log and "resuming at step 28" in log, log
    assert losses(run_dir) == losses(references("ddp"))


ELASTIC = {  # name: (saved with: procs, settings), (resumed with: procs, settings); same global batch
    "dp2_to_dp1": ((2, []), (1, ["parallel.accumulation_steps=2"])),
    # Other micro-batches: the step's rows are split 4 ways instead of 2, and the padded
    # rows' token counts differ between micro-batches; the objective must not change.
    "dp2_to_dp1_micro4": ((2, []), (1, ["data.micro_batch_size=4", "parallel.accumulation_steps=4"])),
    "tp2_to_tp1": ((2, ["parallel.tensor_parallel=2"]), (1, [])),
    "tp1dp2_to_tp2dp1": ((2, []), (2, ["parallel.tensor_parallel=2", "parallel.accumulation_steps=2"])),
    "zero2_dp2_to_dp1": ((2, BACKENDS["zero2"]), (1, [*BACKENDS["zero2"], "parallel.accumulation_steps=2"])),
}


@pytest.mark.parametrize("name", list(ELASTIC))
def test_elastic_resume_continues_the_same_run(name, synthetic_dataset, tmp_path):
    (procs, saved), (new_procs, resumed) = ELASTIC[name]
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert run(reference, procs, _settings(synthetic_dataset, *saved, steps=12, interval=6)) == 0, _log(reference)
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-00000012")
    assert run(run_dir, new_procs, _settings(synthetic_dataset, *resumed, steps=12, interval=6)) == 0, _log(run_dir)
    assert "resuming at step 6" in _log(run_dir)
    want, got = losses(reference), losses(run_dir)
    assert sorted(got) == list(range(1, 13))
    print(f"{name}: loss after resume, max rel. difference "
          f"{max(abs(got[s] - want[s]) / want[s] for s in range(7, 13)):.1e}")
    for step in range(7, 13):
        assert got[step] == pytest.approx(want[step], rel=1e-5), (step, got[step], want[step])
    # The same place in the global sample order: nothing repeated or skipped.
    loader = [json.loads((d / "checkpoints/step-00000012/meta.json").read_text())["loader"] for d in (reference, run_dir)]
    assert (loader[0]["epoch"], loader[0]["rows_consumed"]) == (loader[1]["epoch"], loader[1]["rows_consumed"])


def _distributed_logits(rank, world_size, run_dir, ids):
    """Load the run's newest checkpoint into its own layout; full weights and logits."""
    import warnings
    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    from helm_scale.checkpoint import Checkpointer
    from helm_scale.models.tp_transformer import TensorParallelTransformer
    from helm_scale.parallel import build_engine, init_parallel
    from helm_scale.train_config import load_train_config
    cfg = load_train_config(str(Path(run_dir) / "config.yaml"))
    state = init_parallel(cfg.parallel)
    engine = build_engine(TensorParallelTransformer(cfg.model), cfg.optim, cfg.parallel, state)
    checkpointer = Checkpointer(cfg, state, report=lambda text: None)
    checkpointer.load(checkpointer.check_resumable(checkpointer.find()), engine)
    engine.eval()
    with torch.no_grad():
        shard = engine(ids).float()
    pieces = [torch.empty_like(shard) for _ in range(state.tp_size)]
    dist.all_gather(pieces, shard.contiguous(), group=state.tp_group)
    return engine.full_state_dict(), torch.cat(pieces, dim=-1)


@pytest.mark.parametrize("backend", ["tp2", "zero3"])
def test_export_gives_the_distributed_models_logits(backend, references, tmp_path):
    from helm_scale.cli import main
    from helm_scale.export import load_exported
    run_dir = references(backend)
    assert main(["export", str(run_dir), "-o", str(tmp_path / "export")]) == 0
    exported = load_exported(tmp_path / "export")
    assert exported.step == 30 and exported.config.parallel.backend == json.loads(
        (run_dir / "checkpoints/step-00000030/meta.json").read_text())["layout"]["backend"]
    ids = torch.randint(5, 69, (3, 40), generator=torch.Generator().manual_seed(0))
    (weights, logits), _ = run_ranks(_distributed_logits, 2, str(run_dir), ids)
    for name, tensor in exported.model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(exported.model(ids), logits, rtol=1e-5, atol=1e-5)
