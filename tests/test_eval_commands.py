"""helm-scale eval downstream / annotate end to end on a tiny exported model (random
weights, made here with models.transformer.Transformer + save_export), synthetic CSVs, and the real
sets when ../shared/data is present; the option convention of every evaluation command."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helm_scale.cli import main
from helm_scale.codon import CODONS
from helm_scale.evaluate.probes.annotation import codon_labels

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from helm_scale.export import save_export
    from helm_scale.models.config import ModelConfig
    from helm_scale.models.transformer import Transformer
    from helm_scale.train_config import TrainConfig
    cfg = ModelConfig(num_layers=1, hidden_size=64, ffn_hidden_size=128, num_heads=2, max_seq_len=64)
    torch.manual_seed(0)
    model = Transformer(cfg)
    with torch.no_grad():  # Transformer leaves positions at zero: give them a scale
        model.position_embeddings.normal_(0.0, 0.02)
    return save_export(tmp_path_factory.mktemp("export") / "tiny", model.state_dict(),
                       replace(TrainConfig(), model=cfg), step=7)


def test_downstream_end_to_end(tiny_export, tmp_path, capsys):
    """value = share of GC-rich codons: mean-pooled states carry codon identity, so ridge
    must rank it well even from random weights; RNA input and long sequences exercise
    U -> T and the cut to 64 tokens."""
    rng = np.random.default_rng(0)
    gc_rich = np.array([c.count("G") + c.count("C") >= 2 for c in CODONS])
    rows = []
    for i in range(400):
        codons = rng.integers(0, 64, rng.integers(10, 90))
        seq = "".join(CODONS[c] for c in codons).replace("T", "U") + "AC"  # trailing bases
        rows.append(f"{seq},{gc_rich[codons[:62]].mean():.6f}")
    (tmp_path / "gc.csv").write_text("Sequence,Value\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    code = main(["eval", "downstream", str(tiny_export), str(tmp_path / "gc.csv"), "-o", str(out),
                 "--seeds", "2", "--max-epochs", "4", "--channels", "8"])
    assert code == 0
    report = json.loads((out / "downstream.json").read_text())
    (task,) = report["tasks"]
    assert task["task"] == "gc" and task["sizes"] == {"train": 320, "val": 40, "test": 40}
    assert task["truncated"] == sum(int(r.split(",")[0].__len__() // 3) + 2 > 64 for r in rows)
    assert task["ridge"]["rho"] > 0.8
    assert len(task["textcnn"]["rho"]) == 2 and -1 <= task["textcnn"]["mean"] <= 1
    assert report["backbone"]["step"] == 7
    assert "| gc | 320 / 40 / 40 |" in (out / "downstream.md").read_text()
    assert (out / "downstream.png").stat().st_size > 1000
    assert "cut to 64 tokens" in capsys.readouterr().err


def test_codon_labels_rules():
    assert codon_labels("000011012" + "33", "majority") == ["0", "1", "0"]  # 000, 011 -> 1, 012 -> first
    assert codon_labels("000011012", "first") == ["0", "0", "0"]
    assert codon_labels("100", "majority") == ["0"]


def test_annotate_end_to_end(tiny_export, tmp_path):
    """Region = whether the codon codes for leucine: each codon's own state tells it."""
    rng = np.random.default_rng(1)
    leucine = {"TTA", "TTG", "CTT", "CTC", "CTA", "CTG"}
    lines = ["sequence,region_labels_nt"]
    for _ in range(120):
        codons = [CODONS[c] if rng.random() < 0.7 else rng.choice(sorted(leucine))
                  for c in rng.integers(0, 64, 30)]
        labels = "".join("111" if c in leucine else "000" for c in codons)
        lines.append(f"{''.join(codons)},{labels[:-1]}2")  # one odd nucleotide: majority keeps 1 / 0
    (tmp_path / "ab.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ann"
    assert main(["eval", "annotate", str(tiny_export), str(tmp_path / "ab.csv"), "-o", str(out),
                 "--seeds", "2", "--heads", "linear", "--lr", "1e-2", "--max-epochs", "20"]) == 0
    report = json.loads((out / "annotation.json").read_text())
    (head,) = report["heads"]
    assert report["classes"] == ["FR1", "CDR1"] and report["sizes"] == [96, 12, 12]
    assert head["accuracy_mean"] > 0.95 and head["macro_f1_mean"] > 0.9
    assert report["test_codons"] == 12 * 30
    assert "| linear |" in (out / "annotation.md").read_text()


def test_annotate_bad_input_exits_2(tiny_export, tmp_path, capsys):
    (tmp_path / "x.csv").write_text("sequence,region_labels_nt\n" + "ACGTAC,000\n" * 12)
    assert main(["eval", "annotate", str(tiny_export), str(tmp_path / "x.csv")]) == 2
    assert "6 nucleotides but 3 labels" in capsys.readouterr().err
    (tmp_path / "y.csv").write_text("sequence,regions\n" + "ACGTAC,000000\n" * 12)
    assert main(["eval", "annotate", str(tiny_export), str(tmp_path / "y.csv")]) == 2
    assert "--label-column" in capsys.readouterr().err
    assert main(["eval", "annotate", str(tmp_path / "nope"), str(tmp_path / "y.csv"),
                 "--label-column", "regions"]) == 2
    assert "not a helm-scale export" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (real data is not part of the repo)")
def test_real_sets_run(tiny_export, tmp_path):
    """The real files go through both commands (few rows / epochs: a wiring check)."""
    csv_path = SHARED / "downstream" / "codonbert" / "Tc-Riboswitches.csv"
    assert main(["eval", "downstream", str(tiny_export), str(csv_path), "-o", str(tmp_path / "d"),
                 "--seeds", "1", "--max-epochs", "2", "--channels", "8"]) == 0
    (task,) = json.loads((tmp_path / "d" / "downstream.json").read_text())["tasks"]
    assert task["sizes"] == {"train": 248, "val": 53, "test": 54} and task["truncated"] == 0
    assert main(["eval", "annotate", str(tiny_export), str(SHARED / "annotation" / "antibody_regions.csv"),
                 "-o", str(tmp_path / "a"), "--limit", "100", "--seeds", "1", "--max-epochs", "2"]) == 0
    report = json.loads((tmp_path / "a" / "annotation.json").read_text())
    assert report["classes"] == ["FR1", "CDR1", "FR2", "CDR2", "FR3", "CDR3", "FR4"]
    assert report["truncated"] == 100  # ~125 codons per chain > 64 tokens of the tiny model


def _evaluation_commands() -> dict:
    """name -> parser of every evaluation command (helm-scale eval WHAT and generate)."""
    import argparse

    from helm_scale.cli import build_parser

    def subparsers(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    top = subparsers(build_parser(["eval", "generate"]))
    return {"generate": top["generate"], **{f"eval {k}": v for k, v in subparsers(top["eval"]).items()}}


def test_evaluation_commands_share_one_option_convention():
    commands = _evaluation_commands()
    assert set(commands) == {"generate", "eval intrinsic", "eval generation", "eval ngram", "eval mutation",
                             "eval downstream", "eval annotate"}
    helps = {}
    for name, parser in commands.items():
        for action in parser._actions:
            assert action.help, f"{name}: {action.dest} has no help text"
            for flag in action.option_strings:
                helps.setdefault(flag, {})[name] = (action.help, action.default, action.choices)
    for flag in ("--threads", "--quiet"):  # every command, the same meaning
        assert set(helps[flag]) == set(commands) and len(set(helps[flag].values())) == 1, flag
    assert set(commands) - set(helps["--device"]) == {"eval ngram"}  # no model to place
    assert len(set(helps["--device"].values())) == 1
    assert {choices for _, _, choices in helps["--split"].values()} == {("train", "val", "test")}
