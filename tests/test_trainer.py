import math
from pathlib import Path

import pytest

from data_prep.policy import RecordPolicy
from helm_scale.cli import main
from helm_scale.train_config import ScheduleConfig
from helm_scale.trainer import lr_at
from tests.corpora import prepare
from tests.dist_utils import run_ranks
from tests.trainer_runs import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "corpus"
TINY = str(ROOT / "configs" / "tiny.yaml")


def test_lr_warms_up_then_decays_to_min_lr():
    s = ScheduleConfig(max_steps=100, warmup_steps=10, min_lr=1e-4)
    lrs = [lr_at(i, 1e-2, s) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 1e-2, s) == pytest.approx(1e-4)


@pytest.mark.parametrize("overrides, message", [
    (["model.num_heads=3"], "num_heads 3 does not divide hidden_size 64"),
    (["parallel.tensor_parallel=2", "model.num_heads=2", "model.hidden_size=64", "model.ffn_hidden_size=255"],
     "ffn_hidden_size = 255 is not divisible by tensor_parallel = 2"),
    (["data.objective=mlm"], "needs model.attention=bidirectional"),
    (["data.seq_len=512"], "exceeds model.max_seq_len"),
    (["optim.lrr=1"], "unknown setting optim.lrr"),
    (["data.dataset_dir=/nonexistent"], "has no manifest.json"),
    (["data.global_batch_size=64"], "data.global_batch_size 64 != micro_batch_size 16 x accumulation_steps 1 x DP 1"),
    (["schedule.warmup_steps=5000"], "got max_steps=300, warmup_steps=5000"),
    (["run.keep_last=0"], "keep_every >= 0; got 1000, 0, 0"),
    (["data.pad_to_multiple_of=-8"], "pad_to_multiple_of must be >= 0"),
])
def test_bad_config_fails_before_any_process_group(overrides, message, capsys, synthetic_dataset, monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("a process group was started before the config was checked")
    monkeypatch.setattr("helm_scale.parallel.init_parallel", tripwire)
    code = main(["train", TINY, f"data.dataset_dir={synthetic_dataset}", *overrides])
    assert code == 2 and message in capsys.readouterr().err


def test_world_size_must_be_a_multiple_of_tp(capsys, monkeypatch, synthetic_dataset):
    monkeypatch.setenv("WORLD_SIZE", "3")
    code = main(["train", TINY, f"data.dataset_dir={synthetic_dataset}", "parallel.tensor_parallel=2"])
    assert code == 2 and "world size 3 is not a multiple" in capsys.readouterr().err


def test_sequence_parallel_needs_batch_lengths_that_split_across_tp(capsys, monkeypatch, synthetic_dataset):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["train", TINY, f"data.dataset_dir={synthetic_dataset}", "parallel.tensor_parallel=2",
                 "parallel.sequence_parallel=true", "data.pad_to_multiple_of=3"])
    assert code == 2 and "data.pad_to_multiple_of divisible by TP 2" in capsys.readouterr().err


BACKENDS = [
    ["parallel.backend=ddp"],
    ["parallel.backend=ddp", "parallel.tensor_parallel=2"],
    ["parallel.backend=ddp", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true"],
    ["parallel.backend=deepspeed", "parallel.zero_stage=2"],
    ["parallel.backend=deepspeed", "parallel.zero_stage=3", "parallel.accumulation_steps=2"],
    ["parallel.backend=deepspeed", "parallel.zero_stage=1", "parallel.tensor_parallel=2"],
    ["parallel.backend=ddp", "parallel.compile=true", "parallel.activation_checkpointing=true"],
]


@pytest.mark.slow
def test_every_backend_trains_through_the_trainer(synthetic_dataset, tmp_path):
    short = ["schedule.max_steps=6", "schedule.warmup_steps=2", "run.log_interval=3", "run.eval_interval=0",
             "run.eval_batches=2", "data.micro_batch_size=4", "data.seq_len=64"]
    results = run_ranks(train_and_evaluate, 2, synthetic_dataset, str(tmp_path), [b + short for b in BACKENDS])
    for config, res in zip(BACKENDS, results[0]):
        assert math.isfinite(res["train"]["loss"]) and res["after"]["loss"] < res["before"]["loss"], config
        assert 0 <= res["train"]["data_wait"] <= 1, config
    for a, b in zip(*results):  # every rank reports the same reduced metrics (timings aside)
        assert (a["before"], a["after"], a["train"]["loss"]) == (b["before"], b["after"], b["train"]["loss"])
    assert (tmp_path / "0" / "config.yaml").is_file()
    assert any((tmp_path / "0" / "tensorboard").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_cutting_padding_columns_trains_like_full_rows(synthetic_dataset, tmp_path, objective):
    attention = "causal" if objective == "clm" else "bidirectional"
    base = ["schedule.max_steps=4", "schedule.warmup_steps=1", "run.log_interval=4", "run.eval_interval=0",
            "run.eval_batches=2", "data.micro_batch_size=4", "data.seq_len=128", f"data.objective={objective}",
            f"model.attention={attention}"]
    full, cut = run_ranks(train_and_evaluate, 1, synthetic_dataset, str(tmp_path),
                          [base, base + ["data.pad_to_multiple_of=8"]])[0]
    for key in ("before", "after"):  # the same tokens, fewer padding columns: the same numbers
        assert cut[key]["loss"] == pytest.approx(full[key]["loss"], rel=1e-5), key
    assert cut["train"]["loss"] == pytest.approx(full["train"]["loss"], rel=1e-5)
    from helm_scale.data import LoaderConfig, build_loader
    loader = build_loader(LoaderConfig(synthetic_dataset, objective=objective, seq_len=128, micro_batch_size=4,
                                       num_workers=0, pad_to_multiple_of=8))
    assert min(b["input_ids"].shape[1] for b in loader) <= 96  # columns were cut indeed


def _data_wait(rank, world_size, dataset, run_dir, seconds_per_batch):
    import time

    from helm_scale.train_config import load_train_config
    from helm_scale.trainer import Trainer
    cfg = load_train_config(TINY, [f"data.dataset_dir={dataset}", f"run.run_dir={run_dir}", "data.num_workers=0",
                                   "schedule.max_steps=4", "schedule.warmup_steps=1", "run.log_interval=4",
                                   "run.eval_interval=0", "data.micro_batch_size=4", "data.seq_len=64"])
    trainer = Trainer(cfg)

    def slow(batches):  # a loader that takes seconds_per_batch to produce each batch
        for batch in batches:
            time.sleep(seconds_per_batch)
            yield batch
    trainer._batches = slow(iter(trainer.loader))
    return trainer.fit()["train"]["data_wait"]


@pytest.mark.slow
def test_data_wait_is_the_share_of_time_spent_in_the_loader(synthetic_dataset, tmp_path):
    slow = run_ranks(_data_wait, 1, synthetic_dataset, str(tmp_path / "slow"), 0.5)[0]
    fast = run_ranks(_data_wait, 1, synthetic_dataset, str(tmp_path / "fast"), 0.0)[0]
    assert slow > 0.6 and fast < 0.5 * slow, (slow, fast)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/corpus is absent (real data is not part of the repo)")
def test_clm_and_mlm_learn_real_antibody_sequences(tmp_path):
    dataset = str(prepare(tmp_path / "shards", [SHARED / "antibody_heavy_chains.fasta.gz"],
                          policy=RecordPolicy(frame="trim")))
    common = ["schedule.max_steps=120", "schedule.warmup_steps=10", "run.eval_interval=0", "run.log_interval=40",
              "data.seq_len=128", "data.micro_batch_size=16"]
    clm, mlm = run_ranks(train_and_evaluate, 2, dataset, str(tmp_path / "runs"),
                         [common, common + ["data.objective=mlm", "model.attention=bidirectional"]])[0]
    for name, res in (("clm", clm), ("mlm", mlm)):
        before, after = res["before"]["cross_entropy"], res["after"]["cross_entropy"]
        assert after < 0.6 * before, (name, before, after)  # uniform guessing is ln(69) = 4.2
        assert res["after"]["codon_accuracy"] > 0.3, name
