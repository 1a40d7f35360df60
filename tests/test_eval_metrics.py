import random

import numpy as np
import pytest

from helm_scale.codon import CODONS
from helm_scale.evaluate.generation.metrics import (
    codon_usage,
    diversity,
    frechet_distance,
    frechet_from_embeddings,
    gc_content,
    generation_metrics,
    is_valid_orf,
    js_divergence,
    knn_precision_recall,
    levenshtein,
    plot_codon_usage,
)
from helm_scale.evaluate.sequences import EvalInputError


def _edit_distance_table(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_frechet_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_from_embeddings(x, x.copy()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_two_known_gaussians():
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = (1 + 4) + (1 + 1) = 7.
    assert frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0])) == pytest.approx(7.0)
    # cov1 = I: tr(I) + tr(S) - 2 tr(S^(1/2)); S = [[2, 1], [1, 2]] has eigenvalues 3 and 1.
    s = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert frechet_distance([0, 0], np.eye(2), [0, 0], s) == pytest.approx(2 + 4 - 2 * (3 ** 0.5 + 1))
    # Samples converge to the population value: N(0, I) vs N(1, 4 I) in 2-D gives 2 + 2 = 4.
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (40000, 2)), rng.normal(1, 2, (40000, 2))
    assert frechet_from_embeddings(x, y) == pytest.approx(4.0, abs=0.1)


def test_frechet_agrees_with_scipy_sqrtm_on_non_commuting_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seq, valid", [
    ("ATGAAATAA", True), ("ATGTGA", True),
    ("ATGAAATAAA", False),      # length not a multiple of 3
    ("GTGAAATAA", False),       # no ATG start
    ("ATGAAAGGG", False),       # no stop
    ("ATGTAAAAATAG", False),    # an internal stop
    ("ATGTAA" + "TAA", False),  # two stops
    ("ATGNNNTAA", False),       # not A/C/G/T
    ("ATG", False), ("", False),
    ("AATGAAATAA", False),      # read from the first base: no ATG start
])
def test_orf_validity(seq, valid):
    assert is_valid_orf(seq) is valid


def test_out_of_frame_stop_triplets_do_not_count():
    assert is_valid_orf("ATGTTAAAATAG")  # TAA at offset 4 is out of frame: codons ATG TTA AAA TAG


def test_levenshtein_matches_the_dynamic_programme():
    rng = random.Random(0)
    cases = [("", ""), ("", "ACG"), ("ACGT", "ACGT"), ("kitten", "sitting"), ("ACGT", "TGCA")]
    cases += [("".join(rng.choice("ACGT") for _ in range(rng.randint(0, 90))),
               "".join(rng.choice("AC") for _ in range(rng.randint(0, 90)))) for _ in range(300)]
    for a, b in cases:
        assert levenshtein(a, b) == _edit_distance_table(a, b), (a, b)
    long_a = "".join(rng.choice("ACGT") for _ in range(700))
    assert levenshtein(long_a, long_a[:300] + "G" + long_a[301:]) <= 1


def test_diversity_on_tiny_sets():
    assert diversity(["ACGT", "ACGT"]) == 0.0
    # pairs: (AAAA, AAAT) 1/4, (AAAA, TTTT) 4/4, (AAAT, TTTT) 3/4 -> mean 2/3
    assert diversity(["AAAA", "AAAT", "TTTT"]) == pytest.approx(2 / 3)
    # normalised by the longer sequence: (AC, ACGT) = 2/4
    assert diversity(["AC", "ACGT"]) == pytest.approx(0.5)
    # sampled pairs: all pairs are identical but one sequence, so a sample stays close to exact
    many = ["ACGTACGT"] * 60 + ["TTTTTTTT"]
    exact, sampled = diversity(many, max_pairs=10**6), diversity(many, max_pairs=500, seed=3)
    assert exact == pytest.approx(60 * 0.75 / (61 * 60 / 2)) and abs(sampled - exact) < 0.03
    with pytest.raises(EvalInputError):
        diversity(["ACGT"])


def test_codon_usage_divergence():
    seqs = ["ATGAAATAA", "ATGGGCCCTTGA", "ATGAA"]
    usage = codon_usage(seqs)
    assert usage.sum() == pytest.approx(1.0) and usage[CODONS.index("ATG")] == pytest.approx(3 / 8)
    assert js_divergence(usage, codon_usage(list(reversed(seqs)))) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(codon_usage(["AAA"]), codon_usage(["CCC"])) == pytest.approx(1.0)  # disjoint
    # half the mass shared: P = (1/2, 1/2, 0), Q = (1/2, 0, 1/2) -> JS = 1/2 bit
    assert js_divergence(codon_usage(["AAACCC"]), codon_usage(["AAAGGG"])) == pytest.approx(0.5)


def test_gc_content_and_knn_precision_recall():
    assert gc_content(["GGCC", "AATT", "GCAT"]) == pytest.approx(0.5)
    x = np.random.default_rng(0).normal(size=(50, 4))
    assert knn_precision_recall(x, x.copy()) == (1.0, 1.0)
    far = x + 100.0
    assert knn_precision_recall(x, far) == (0.0, 0.0)


def test_generation_metrics_without_a_model_and_the_plot(tmp_path):
    ref = ["ATGAAAGGGTAA", "ATGCCCAAATGA", "ATGTTTTAG"]
    gen = ["ATGAAAGGGTAA", "ATGCCCAAATGA", "GGGCCC"]
    out = generation_metrics(gen, ref)
    assert out["valid_orf_fraction"] == {"generated": pytest.approx(2 / 3), "reference": 1.0}
    assert 0 < out["codon_usage_js_divergence"] < 1 and "frechet_distance" not in out
    png = plot_codon_usage(gen, ref, tmp_path / "usage.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
