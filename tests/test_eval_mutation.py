import json
import random
from collections import Counter

import numpy as np
import pytest

from data_prep.synth import generate, write_fasta
from helm_scale.cli import main
from helm_scale.evaluate.baselines.ngram import NgramLM
from helm_scale.evaluate.generation.metrics import levenshtein
from helm_scale.evaluate.lm.mutation import KINDS, mutate, mutation_detection, ngram_score_fn
from helm_scale.evaluate.sequences import EvalInputError


def _random_seqs(n, seed=0, lo=40, hi=120):
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.mark.parametrize("k", [1, 5, 10])
def test_each_kind_makes_exactly_k_edits(k):
    for i, seq in enumerate(_random_seqs(40, seed=k)):
        rng = random.Random(i)
        ins, dele = mutate(seq, "insert", k, rng), mutate(seq, "delete", k, rng)
        assert len(ins) == len(seq) + k and levenshtein(seq, ins) == k
        assert len(dele) == len(seq) - k and levenshtein(seq, dele) == k
        sub = mutate(seq, "substitute", k, rng)
        assert len(sub) == len(seq) and sum(a != b for a, b in zip(seq, sub)) == k
        swap = mutate(seq, "swap", k, rng)
        diff = [j for j, (a, b) in enumerate(zip(seq, swap)) if a != b]
        assert len(swap) == len(seq) and Counter(swap) == Counter(seq) and len(diff) == 2 * k
        pairs = list(zip(diff[::2], diff[1::2]))  # non-overlapping adjacent transpositions
        assert all(b == a + 1 and seq[a] == swap[b] and seq[b] == swap[a] for a, b in pairs)


def test_mutation_is_seeded_and_refuses_impossible_edits():
    seq = _random_seqs(1)[0]
    assert mutate(seq, "swap", 5, random.Random("x")) == mutate(seq, "swap", 5, random.Random("x"))
    with pytest.raises(EvalInputError, match="non-overlapping"):
        mutate("AAAAAAAAAAAC", "swap", 2, random.Random(0))
    with pytest.raises(EvalInputError):
        mutate("ACG", "delete", 3, random.Random(0))
    with pytest.raises(EvalInputError):
        mutate("ACG", "transpose", 1, random.Random(0))


def test_detection_accuracy_of_hand_made_scorers():
    seqs = _random_seqs(30)
    # Preferring longer sequences: never right about insertions, always about deletions,
    # and a tie (1/2) for substitutions and swaps, which keep the length.
    out = mutation_detection(lambda ss: [-len(s) for s in ss], seqs, edits=(1, 5), seed=0, progress=False)
    assert out["accuracy"] == {"insert": {"1": 0.0, "5": 0.0}, "delete": {"1": 1.0, "5": 1.0},
                               "substitute": {"1": 0.5, "5": 0.5}, "swap": {"1": 0.5, "5": 0.5}}
    assert out["accuracy_by_edits"] == {"1": 0.5, "5": 0.5} and out["ties"] == 30 * 2 * 2
    # An oracle that knows the real sequences is always right.
    real = set(seqs)
    oracle = mutation_detection(lambda ss: [0.0 if s in real else 1.0 for s in ss], seqs, progress=False)
    assert oracle["accuracy_overall"] == 1.0 and set(oracle["accuracy"]) == set(KINDS)
    # Copies depend on (seed, sequence, kind, k) only: fewer kinds, same answers.
    subset = mutation_detection(lambda ss: [-len(s) for s in ss], seqs, edits=(5,), kinds=("delete",),
                                seed=0, progress=False)
    assert subset["accuracy"]["delete"]["5"] == 1.0


def test_an_ngram_model_detects_edits_of_real_like_coding_sequences():
    records = generate(260, seed=11, median_codons=80, min_codons=40, defect_rate=0)
    seqs = [seq.decode() if isinstance(seq, bytes) else seq for _, seq in records]
    lm = NgramLM(order=5).fit(seqs[:200])
    out = mutation_detection(ngram_score_fn(lm), seqs[200:240], edits=(1, 10), seed=1, progress=False)
    acc = out["accuracy_by_edits"]
    # Synthetic codons are drawn independently, so a 5-gram sees little beyond codon usage.
    assert acc["10"] > 0.7 and acc["10"] >= acc["1"] > 0.5, out


def test_cli_ngram_then_mutation(tmp_path, capsys):
    write_fasta(tmp_path / "train.fa", generate(150, seed=1, median_codons=60, min_codons=30, defect_rate=0))
    write_fasta(tmp_path / "test.fa", generate(30, seed=2, median_codons=60, min_codons=30, defect_rate=0))
    assert main(["eval", "ngram", "--train", str(tmp_path / "train.fa"), "--test", str(tmp_path / "test.fa"),
                 "--order", "4", "--save", str(tmp_path / "lm.npz"), "--quiet"]) == 0
    ngram = json.loads(capsys.readouterr().out)
    assert 1.0 < ngram["per_nucleotide_perplexity"] < 4.2 and ngram["test_sequences"] == 30
    code = main(["eval", "mutation", str(tmp_path / "lm.npz"), "--data", str(tmp_path / "test.fa"), "-n", "12",
                 "--edits", "1", "5", "--quiet", "-o", str(tmp_path / "mut.json")])
    assert code == 0
    out = json.loads((tmp_path / "mut.json").read_text())
    assert out["n_sequences"] == 12 and set(out["accuracy_by_edits"]) == {"1", "5"}
    assert np.isfinite(out["accuracy_overall"])


def test_cli_bad_input_exits_2(tmp_path, capsys):
    (tmp_path / "x.fa").write_text(">a\nACGT\n")
    assert main(["eval", "mutation", str(tmp_path / "nothing"), "--data", str(tmp_path / "x.fa")]) == 2
    assert "neither an export" in capsys.readouterr().err
    assert main(["eval", "ngram", "--train", str(tmp_path / "missing.fa"), "--test", str(tmp_path / "x.fa")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", "ngram", "--data", str(tmp_path / "x.fa"), "--order", "0"]) == 2
    assert "order must be" in capsys.readouterr().err
