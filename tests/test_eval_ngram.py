import math
import random

import numpy as np
import pytest

from helm_scale.evaluate.baselines.ngram import NgramLM
from helm_scale.evaluate.sequences import EvalInputError
from helm_scale.tokenizer import SequenceError


def test_kneser_ney_matches_a_hand_computation():
    # Train ["AC", "A"], bigrams, D = 0.5. Bigram counts: (<bos> A) 2, (A C) 1, (C <eos>) 1,
    # (A <eos>) 1. Unigram continuation counts: A 1, C 1, <eos> 2 (of 4, 3 types), so
    # P1(w) = max(N(.w) - D, 0) / 4 + D * 3/4 * 1/5: A = C = 0.2, <eos> = 0.45, G = T = 0.075.
    lm = NgramLM(order=2, smoothing="kneser-ney", discount=0.5).fit(["AC", "A"])
    assert lm.next_distribution("") == pytest.approx([0.8, 0.05, 0.01875, 0.01875, 0.1125])
    assert lm.next_distribution("A") == pytest.approx([0.1, 0.35, 0.0375, 0.0375, 0.475])
    # "AC": P(A | <bos>) = 1.5/2 + 0.5 * 1/2 * 0.2 = 0.8; P(C | A) = 0.5/2 + 0.5 * 2/2 * 0.2 = 0.35;
    # P(<eos> | C) = 0.5/1 + 0.5 * 1/1 * 0.45 = 0.725.
    nll, nt = lm.score(["AC"])
    assert nll[0] == pytest.approx(-math.log(0.8 * 0.35 * 0.725)) and nt[0] == 2
    assert lm.perplexity(["AC"]) == pytest.approx(math.exp(-math.log(0.8 * 0.35 * 0.725) / 2))


def test_laplace_matches_a_hand_computation():
    lm = NgramLM(order=2, smoothing="add-k", k=1.0).fit(["AC", "A"])
    # P(A | <bos>) = (2 + 1) / (2 + 5); P(C | A) = (1 + 1) / (2 + 5); P(<eos> | C) = (1 + 1) / (1 + 5)
    nll, _ = lm.score(["AC"])
    assert nll[0] == pytest.approx(-math.log(3 / 7 * 2 / 7 * 2 / 6))
    # An unseen context is uniform over the 4 nucleotides and <eos>.
    assert lm.next_distribution("G") == pytest.approx([0.2] * 5)


@pytest.mark.parametrize("level, order", [("nucleotide", 1), ("nucleotide", 6), ("codon", 3)])
@pytest.mark.parametrize("smoothing", ["kneser-ney", "add-k"])
def test_every_next_symbol_distribution_sums_to_one(level, order, smoothing):
    rng = random.Random(0)
    train = ["".join(rng.choice("ACGT") for _ in range(rng.randint(3, 90))) for _ in range(40)]
    lm = NgramLM(order=order, level=level, smoothing=smoothing).fit(train)
    for history in ["", "A", "ACGTTGCA" * 3, "TTTTTTTTTTTT", train[0][:30]]:
        p = lm.next_distribution(history)
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()


def test_codon_scores_count_whole_codons_and_save_load_round_trips(tmp_path):
    lm = NgramLM(order=2, level="codon").fit(["ATGAAATAA", "ATGCCCGGGTAA"])
    nll, nt = lm.score(["ATGAAATAAGC"])  # trailing "GC" is dropped
    assert nt[0] == 9 and nll[0] == pytest.approx(lm.score(["ATGAAATAA"])[0][0])
    lm.save(tmp_path / "new_dir" / "lm.npz")  # its directory is made
    again = NgramLM.load(tmp_path / "new_dir" / "lm.npz")
    assert again.config() == lm.config()
    assert np.allclose(again.score(["ATGCCCTAA"])[0], lm.score(["ATGCCCTAA"])[0])


def test_a_higher_order_model_fits_structured_sequences_better():
    rng = random.Random(1)
    motifs = ["ATGGCC", "GGATCC", "TTTAAA"]
    data = ["".join(rng.choice(motifs) for _ in range(30)) for _ in range(60)]
    train, test = data[:50], data[50:]
    ppl = [NgramLM(order=n).fit(train).perplexity(test) for n in (1, 3, 6)]
    assert ppl[0] > ppl[1] > ppl[2] and ppl[2] < 1.6


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="order must be"):
        NgramLM(order=11, level="codon")
    with pytest.raises(SequenceError, match="A/C/G/T only"):
        NgramLM(order=2).fit(["ACGN"])
    with pytest.raises(EvalInputError, match="not a saved n-gram"):
        (tmp_path / "x.npz").write_text("nope")
        NgramLM.load(tmp_path / "x.npz")


def _reference_kneser_ney(train, order, d, alphabet="ACGT"):
    """A direct, dictionary-based transcription of interpolated Kneser-Ney, for comparison."""
    from collections import Counter, defaultdict
    eos, bos = len(alphabet), len(alphabet) + 1
    grams = Counter()
    for seq in train:
        s = [bos] * (order - 1) + [alphabet.index(c) for c in seq] + [eos]
        for t in range(order - 1, len(s)):
            for m in range(1, order + 1):
                grams[tuple(s[t - m + 1:t + 1])] += 1
    counts = {order: {g: c for g, c in grams.items() if len(g) == order}}
    for m in range(order - 1, 0, -1):  # continuation counts: distinct left extensions
        cont = defaultdict(int)
        for g in counts[m + 1] if m + 1 == order else [g for g in grams if len(g) == m + 1]:
            cont[g[1:]] += 1
        counts[m] = dict(cont)

    def prob(w, h):
        m = len(h) + 1
        if m == 0:
            return 1 / (len(alphabet) + 1)
        lower = prob(w, h[1:]) if h else 1 / (len(alphabet) + 1)
        table = counts[m]
        follow = {g[-1]: c for g, c in table.items() if g[:-1] == h}
        total = sum(follow.values())
        if total == 0:
            return lower
        return max(follow.get(w, 0) - d, 0) / total + d * len(follow) / total * lower
    return prob, bos


def test_kneser_ney_agrees_with_a_direct_transcription():
    rng = random.Random(5)
    train = ["".join(rng.choice("ACGT") for _ in range(rng.randint(5, 40))) for _ in range(25)]
    lm = NgramLM(order=4, discount=0.6).fit(train)
    prob, bos = _reference_kneser_ney(train, 4, 0.6)
    for history in ["", "A", "AC", "ACG", "TTGA", train[3][:12], "GGGGGG"]:
        h = [bos] * 3 + ["ACGT".index(c) for c in history]
        expected = [prob(w, tuple(h[-3:])) for w in range(5)]
        assert lm.next_distribution(history) == pytest.approx(expected, rel=1e-12)
