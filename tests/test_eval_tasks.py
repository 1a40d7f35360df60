"""Task CSVs: column detection, splits, tokenisation, and bad input -> exit 2 naming it."""
from pathlib import Path

import numpy as np
import pytest

from helm_scale.codon import Vocabulary
from helm_scale.evaluate.probes.tasks import find_task_files, read_task, seeded_split
from helm_scale.evaluate.sequences import EvalInputError, tokenise

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
V = Vocabulary.default()


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _rows(n, with_split=True):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        seq = "".join(rng.choice(list("ACGU"), 30))
        split = ",train" if i < n - 4 else (",val" if i < n - 2 else ",test")
        out.append(f"{seq},{i * 0.5}" + (split if with_split else ""))
    return out


def test_detects_codonbert_layout(tmp_path):
    t = read_task(_csv(tmp_path / "a.csv", "Sequence,Value,Split", _rows(20)))
    assert t.columns == {"sequence": "Sequence", "value": "Value", "split": "Split"}
    assert t.split_sizes() == {"train": 16, "val": 2, "test": 2}
    assert t.name == "a" and t.values[3] == 1.5


def test_detects_lowercase_and_abundance_and_seeds_a_split(tmp_path):
    rows = [f"g{i},{i}.0,{s.split(',')[0]}" for i, s in enumerate(_rows(50, with_split=False))]
    t = read_task(_csv(tmp_path / "e.csv", "gene_id,abundance,cds", rows), split_seed=3)
    assert t.columns == {"sequence": "cds", "value": "abundance", "split": None}
    assert t.split_sizes() == {"train": 40, "val": 5, "test": 5}
    assert "seeded 80/10/10" in t.split_source
    again = read_task(tmp_path / "e.csv", split_seed=3)
    assert (again.split == t.split).all()  # same seed, same split
    assert not (read_task(tmp_path / "e.csv", split_seed=4).split == t.split).all()


def test_seeded_split_sizes():
    s = seeded_split(167, 0)
    assert [(s == i).sum() for i in range(3)] == [134, 17, 16]


def test_override_columns_and_missing_val_is_carved_from_train(tmp_path):
    rows = [r.replace(",val", ",train") for r in _rows(30)]
    t = read_task(_csv(tmp_path / "b.csv", "nt,y_obs,fold", rows), "nt", "y_obs", "fold")
    sizes = t.split_sizes()
    assert sizes["val"] == 28 // 9 and sizes["train"] == 28 - 28 // 9 and sizes["test"] == 2
    assert any("moved to val" in n for n in t.notes)


@pytest.mark.parametrize("header,rows,kwargs,message", [
    ("seq_x,Value", ["ACGTTT,1"] * 12, {}, "no sequence column found"),
    ("Sequence,Value", ["ACGTTT,1"] * 12, {"value_column": "score"}, "no column 'score' (--value-column)"),
    ("Sequence,Value", ["ACGTTT,1"] * 11 + ["ACGTTT,high"], {}, ":13: value 'high'"),
    ("Sequence,Value,Split", ["ACGTTT,1,train"] * 11 + ["ACGTTT,1,holdout"], {}, "split 'holdout'"),
    ("Sequence,Value", ["ACGTTT,1"] * 11 + ["AC,1"], {}, "shorter than one codon"),
    ("Sequence,Value", ["ACGTTT,1"] * 11 + ["ACGTTT,1,extra"], {}, "3 fields"),
    ("Sequence,Value", ["ACGTTT,1"] * 5, {}, "at least 10"),
    ("Sequence,Value,Split", ["ACGTTT,1,train"] * 12, {}, "no test rows"),
])
def test_bad_input_is_named(tmp_path, header, rows, kwargs, message):
    with pytest.raises(EvalInputError) as e:
        read_task(_csv(tmp_path / "bad.csv", header, rows), **kwargs)
    assert message in str(e.value)


def test_empty_values_are_dropped_and_counted(tmp_path):
    t = read_task(_csv(tmp_path / "c.csv", "Sequence,Value", ["ACGTTT,1"] * 12 + ["ACGTTT,", "ACGTTT,nan"]))
    assert len(t.sequences) == 12 and t.notes == ["dropped 2 rows with an empty value"]


def test_missing_column_exits_2_naming_it(tmp_path, capsys):
    from helm_scale.cli import main
    path = _csv(tmp_path / "t.csv", "Sequence,Value", ["ACGTTT,1"] * 12)
    code = main(["eval", "downstream", str(tmp_path / "no_model"), str(path), "-o", str(tmp_path / "o"),
                 "--value-column", "Expression"])
    assert code == 2
    assert "no column 'Expression'" in capsys.readouterr().err
    assert main(["eval", "downstream", str(tmp_path / "no_model"), str(tmp_path / "nothing.csv"),
                 "-o", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_find_task_files_walks_directories(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    a = _csv(tmp_path / "d" / "sub" / "a.csv", "Sequence,Value", [])
    b = _csv(tmp_path / "d" / "b.csv", "Sequence,Value", [])
    assert find_task_files([str(tmp_path / "d"), str(b)]) == [b, a]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalInputError, match="no .csv"):
        find_task_files([str(tmp_path / "empty")])


def test_tokenise_rna_in_frame_unknown_and_cut():
    rna = tokenise(["AUG GCN uaa GC"], V, max_len=10)  # U -> T, spaces ignored, lower case, 2 trailing bases dropped
    assert [V.tokens[i] for i in rna.ids[0]] == ["<cls>", "ATG", "<unk>", "TAA", "<eos>"]
    assert rna.unknown_codons == 1 and rna.truncated == 0
    tok = tokenise(["ATGGCTTAA", "ATG" * 10], V, max_len=6)
    assert [V.tokens[i] for i in tok.ids[0]] == ["<cls>", "ATG", "GCT", "TAA", "<eos>"]
    assert len(tok.ids[1]) == 6 and tok.ids[1][-1] != V.eos_id  # cut like training batches: no <eos>
    assert tok.truncated == 1 and tok.unknown_codons == 0


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (real data is not part of the repo)")
def test_real_task_files_are_detected():
    files = find_task_files([str(SHARED / "downstream")])
    tasks = {f.stem: read_task(f) for f in files}
    assert set(tasks) == {"calm_ecoli_protein_abundance", "mRFP_Expression", "Tc-Riboswitches",
                          "CoV_Vaccine_Degradation", "MLOS"}
    assert tasks["mRFP_Expression"].split_sizes() == {"train": 1021, "val": 219, "test": 219}
    assert tasks["MLOS"].columns["sequence"] == "CDS" and "seeded" in tasks["MLOS"].split_source
    assert tasks["calm_ecoli_protein_abundance"].columns == {"sequence": "cds", "value": "abundance", "split": None}
