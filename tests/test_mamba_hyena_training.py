"""Mamba and Hyena through the real trainer (gloo processes, CPU): every loss under DDP and
DeepSpeed ZeRO, CLM and MLM; SIGKILL mid-run then restart is bit-exact; the export gives
the trained model's numbers to the evaluation commands."""
from __future__ import annotations

import math
import random
import signal

import pytest

from helm_scale.cli import main
from helm_scale.export import load_exported
from tests.dist_utils import run_ranks
from tests.torchrun_utils import interrupt_at, losses, run
from tests.trainer_runs import train_and_evaluate

pytestmark = pytest.mark.slow

ARCH = {"mamba": ["model.arch=mamba", "model.position=learned", "data.pack=false"],
        "hyena": ["model.arch=hyena", "model.position=none", "data.pack=false"]}
SMALL = ["model.num_layers=2", "model.hidden_size=32", "model.ffn_hidden_size=64", "model.num_heads=2",
         "data.seq_len=64", "data.micro_batch_size=4", "data.num_workers=0"]
MLM = ["data.objective=mlm", "model.attention=bidirectional"]
RUNS = [  # (objective, loss, backend): every loss, both objectives, DDP and each ZeRO stage
    (["loss.name=xe"], ["parallel.backend=ddp", "parallel.activation_checkpointing=true"]),
    (["loss.name=hxe", *MLM], ["parallel.backend=deepspeed", "parallel.zero_stage=1"]),
    (["loss.name=soft"], ["parallel.backend=deepspeed", "parallel.zero_stage=2"]),
    (["loss.name=aa", *MLM], ["parallel.backend=ddp"]),
    (["loss.name=hxe+aa"], ["parallel.backend=deepspeed", "parallel.zero_stage=3",
                            "parallel.accumulation_steps=2"]),
]


@pytest.mark.parametrize("arch", ["mamba", "hyena"])
def test_every_loss_and_backend_trains(arch, synthetic_dataset, tmp_path):
    short = ["schedule.max_steps=8", "schedule.warmup_steps=2", "run.log_interval=4", "run.eval_interval=0",
             "run.eval_batches=2", "data.eval_split=val"]
    runs = [[*ARCH[arch], *SMALL, *loss, *backend, *short] for loss, backend in RUNS]
    results = run_ranks(train_and_evaluate, 2, synthetic_dataset, str(tmp_path), runs)
    for (loss, backend), res in zip(RUNS, results[0]):
        assert math.isfinite(res["train"]["loss"]) and res["after"]["loss"] < res["before"]["loss"], (loss, backend)
    for a, b in zip(*results):  # both ranks report the same reduced metrics
        assert (a["before"], a["after"]) == (b["before"], b["after"])
    # The ZeRO-3 run's checkpoint exports and evaluates to the trainer's own cross-entropy.
    from helm_scale.evaluate import evaluate_intrinsic
    assert main(["export", str(tmp_path / "4"), "-o", str(tmp_path / "export")]) == 0
    exported = load_exported(tmp_path / "export")
    assert type(exported.model).__name__ == {"mamba": "MambaLM", "hyena": "HyenaLM"}[arch]
    out = evaluate_intrinsic(exported, synthetic_dataset, "val", progress=False)
    assert math.isfinite(out["cross_entropy"]) and out["cross_entropy"] < results[0][4]["before"]["cross_entropy"]


def _settings(dataset, arch, *extra):
    return [f"data.dataset_dir={dataset}", *ARCH[arch], *SMALL, "model.dropout=0.1", "schedule.max_steps=16",
            "schedule.warmup_steps=3", "run.checkpoint_interval=4", "run.log_interval=1", "run.eval_interval=0",
            "run.tensorboard=false", *extra]


@pytest.mark.parametrize("arch, backend", [("mamba", []), ("hyena", []),
                                           ("mamba", ["parallel.backend=deepspeed", "parallel.zero_stage=2"])])
def test_sigkill_then_restart_is_bit_exact(arch, backend, synthetic_dataset, tmp_path):
    settings = _settings(synthetic_dataset, arch, *backend)
    assert run(tmp_path / "reference", 2, settings) == 0, (tmp_path / "reference.log").read_text()
    expected = losses(tmp_path / "reference")
    run_dir = tmp_path / "run"
    assert interrupt_at(run_dir, 2, settings, random.Random().randint(5, 11), signal.SIGKILL, whole_job=True) != 0
    assert run(run_dir, 2, settings) == 0, (tmp_path / "run.log").read_text()
    assert "resuming at step" in (tmp_path / "run.log").read_text()
    assert losses(run_dir) == expected


@pytest.mark.parametrize("arch", ["mamba", "hyena"])
def test_compiled_blocks_match_eager(arch):
    """parallel.compile wraps their blocks as the transformer's: one graph, no breaks."""
    import copy

    import torch
    import torch._dynamo

    from helm_scale.models.config import ModelConfig
    from helm_scale.parallel.compiling import apply_compile
    from helm_scale.models.registry import build_model
    torch.manual_seed(0)
    eager = build_model(ModelConfig(arch=arch, position="learned" if arch == "mamba" else "none",
                                          num_layers=2, hidden_size=32, ffn_hidden_size=64, num_heads=2,
                                          max_seq_len=64))
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    apply_compile(compiled)
    ids = torch.randint(5, 69, (2, 40))
    for model in (eager, compiled):
        model(ids).square().mean().backward()
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
