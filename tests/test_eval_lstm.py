"""The LSTM baseline: the module, its configuration checks, export, and (slow) training
through the trainer."""
import math
from pathlib import Path

import pytest
import torch

from helm_scale.cli import main
from helm_scale.evaluate import evaluate_intrinsic, generate, sequence_nll
from helm_scale.export import load_exported
from helm_scale.models.config import ModelConfig
from helm_scale.models.lstm import LstmLM
from helm_scale.models.registry import num_parameters
from helm_scale.train_config import load_train_config
from tests.dist_utils import run_ranks
from tests.eval_utils import tiny_dataset, tiny_export

ROOT = Path(__file__).resolve().parents[1]
LSTM = str(ROOT / "configs" / "lstm_baseline.yaml")
SMALL = {"arch": "lstm", "num_layers": 2, "hidden_size": 32, "num_heads": 2, "ffn_hidden_size": 64,
         "max_seq_len": 64}


def test_lstm_shapes_parameter_count_and_causality():
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL)
    model = LstmLM(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) == num_parameters(cfg)
    ids = torch.randint(5, 69, (3, 20))
    logits = model(ids)
    assert logits.shape == (3, 20, cfg.padded_vocab_size)
    changed = ids.clone()
    changed[:, 12:] = 7
    assert torch.equal(model(changed)[:, :12], logits[:, :12])  # the past never sees the future
    assert model.hidden_states(ids).shape == (3, 20, 32)
    with pytest.raises(ValueError, match="packed rows"):
        model(ids, segment_ids=torch.tensor([[1] * 10 + [2] * 10] * 3))


def test_shipped_lstm_config_is_the_second_seeds_4_x_512():
    cfg = load_train_config(LSTM)
    assert (cfg.model.arch, cfg.model.num_layers, cfg.model.hidden_size) == ("lstm", 4, 512)
    assert abs(num_parameters(cfg.model) - 8.45e6) < 0.05e6
    assert cfg.parallel.tensor_parallel == 1 and not cfg.data.pack


@pytest.mark.parametrize("overrides, message", [
    (["parallel.tensor_parallel=2"], "arch 'lstm' has no tensor-parallel form: it needs tensor_parallel = 1"),
    (["data.pack=true"], "model.arch lstm cannot take packed rows"),
    (["data.objective=mlm", "model.attention=bidirectional"], "arch 'lstm' is a left-to-right model"),
    (["model.arch=gru"], "arch must be one of"),
])
def test_lstm_config_errors(overrides, message, tmp_path, capsys):
    dataset = tmp_path / "no-such-dataset"  # every error here comes before the dataset is looked at
    assert main(["train", LSTM, f"data.dataset_dir={dataset}", *overrides]) == 2
    assert message in capsys.readouterr().err


def test_an_exported_lstm_loads_scores_and_generates(tmp_path):
    exported = load_exported(tiny_export(tmp_path / "lstm", **SMALL))
    assert isinstance(exported.model, LstmLM)
    nll, nt = sequence_nll(exported, ["ATGAAATAA", "ATGCCCGGGTAG"])
    assert nt.tolist() == [9, 12] and all(math.isfinite(x) for x in nll)
    seqs = generate(exported, 3, max_codons=10, progress=False)
    assert len(seqs) == 3 and all(s.startswith("ATG") for s in seqs)


def _train_lstm(rank, world_size, dataset, run_dir):
    import warnings
    warnings.filterwarnings("ignore")
    from helm_scale.trainer import Trainer
    cfg = load_train_config(LSTM, [f"data.dataset_dir={dataset}", f"run.run_dir={run_dir}", "data.num_workers=0",
                                   "model.num_layers=1", "model.hidden_size=64", "model.num_heads=2",
                                   "model.max_seq_len=128", "data.seq_len=128", "data.micro_batch_size=8",
                                   "schedule.max_steps=60", "schedule.warmup_steps=5", "optim.lr=1e-2",
                                   "run.eval_interval=0", "run.log_interval=30", "run.eval_batches=4",
                                   "model.dropout=0.0", "data.eval_split=test"])
    cfg.check(world_size)
    trainer = Trainer(cfg)
    before = trainer.evaluate()
    summary = trainer.fit()
    return {"before": before, "after": summary["eval"]}


@pytest.mark.slow
def test_the_trainer_trains_an_lstm_and_its_export_evaluates(tmp_path):
    dataset = tiny_dataset(tmp_path, records=400, test_fraction=0.1)
    results = run_ranks(_train_lstm, 2, str(dataset), str(tmp_path / "run"))
    before, after = results[0]["before"], results[0]["after"]
    # Synthetic codons are drawn independently from a usage table: the best model knows that
    # table (about 3.95 nats per codon against 4.28 for the uniform start).
    assert after["cross_entropy"] < before["cross_entropy"] - 0.2, (before, after)
    # Through the checkpoint the trainer wrote at its last step and `helm-scale export`.
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "export")]) == 0
    exported = load_exported(tmp_path / "export")
    assert isinstance(exported.model, LstmLM) and exported.step == 60
    out = evaluate_intrinsic(exported, dataset, "test", progress=False)
    assert out["cross_entropy"] == pytest.approx(after["cross_entropy"], abs=0.05)
