"""benchmarks/helm_eval_lm.py, the language-model half of the HELM benchmark: its commands
run (in-process) on tiny exports and a tiny corpus, and the tables come out of their JSON."""
import json

import pytest

from benchmarks import helm_eval_lm
from helm_scale.cli import main as helm_scale
from tests.eval_utils import tiny_dataset, tiny_export

HELM = ["python", "-m", "helm_scale.cli"]


def test_trained_tokens_counts_a_step_logged_twice_once(tmp_path):
    records = [{"kind": "train", "step": 25, "tokens": 100.0}, {"kind": "eval", "step": 25, "tokens": 7.0},
               {"kind": "train", "step": 50, "tokens": 90.0},
               {"kind": "train", "step": 50, "tokens": 90.0},  # logged again after a resume
               {"kind": "train", "step": 75, "tokens": 80.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert helm_eval_lm.trained_tokens(tmp_path) == 270
    assert helm_eval_lm.trained_tokens(tmp_path / "missing") is None


@pytest.mark.slow
def test_chains_run_and_tables_report_every_scorer(tmp_path):
    corpus = tiny_dataset(tmp_path, records=160, test_fraction=0.25, val_fraction=0.25)
    exports = {"xe": tiny_export(tmp_path / "xe", seed=0), "random": tiny_export(tmp_path / "rnd", seed=1, std=1.0)}
    out = tmp_path / "lm"
    reference = helm_eval_lm.write_cds_sets(corpus, out, n=10)
    real = (out / "real" / "generated.fasta").read_text().split()
    assert sum(line.startswith(">") for line in real) == 10
    assert all(s.startswith("ATG") for s in real if not s.startswith(">"))

    chains = helm_eval_lm.lm_chains(HELM, corpus, reference, exports, exports["xe"], out, quick=True)
    assert set(chains) == {"xe", "random", "ngram", "real"}
    # 64 positions hold 62 codons; the mutation set leaves room for 10 inserted bases.
    assert all("--max-nt" in cmd and cmd[cmd.index("--max-nt") + 1] == str(3 * 62 - 10)
               for jobs in chains.values() for _, cmd in jobs if "mutation" in cmd)
    for jobs in chains.values():
        for marker, cmd in jobs:
            assert cmd[:3] == HELM and helm_scale(cmd[3:]) == 0, cmd
            assert marker.is_file(), marker

    lm = helm_eval_lm.collect(out, exports, runs={})
    assert lm["models"]["xe"]["parameters"] > 0 and lm["models"]["xe"]["tokens_trained"] == 0
    for m in lm["models"].values():
        assert set(m["generation"]) == set(helm_eval_lm.SAMPLINGS)
        assert 0.0 <= m["mutation"]["accuracy_overall"] <= 1.0
    assert all(g["perplexity"]["per_nucleotide_perplexity"] > 1 for g in lm["ngrams"].values())
    text = helm_eval_lm.lm_markdown(lm, {"xe": "XE", "random": "untrained"})
    for row in ("| XE |", "| untrained |", "| codon 3-gram, Kneser-Ney |", "| real (val sample) |"):
        assert row in text
    assert text.count("| XE | ancestral |") == 1
