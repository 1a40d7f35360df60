"""Metrics of generated sequences against real ones.

    generation_metrics(generated, reference, exported=None, max_pairs=1000, max_embed=1000,
                       seed=0) -> dict
    gc_content(seqs) -> float               mean over sequences of the G+C fraction
    codon_usage(seqs) -> [64] frequencies   in-frame codons (CODONS order), non-ACGT skipped
    js_divergence(p, q) -> float            Jensen-Shannon divergence, base 2: 0 = same, 1 = disjoint
    valid_orfs(seqs) -> bool [n]            ATG first, length % 3 == 0, one stop, and it is last
    is_valid_orf(seq) -> bool               the same for one sequence
    levenshtein(a, b) -> int                bit-parallel (Myers 1999 / Hyyrö 2001)
    diversity(seqs, max_pairs=1000, seed=0) -> float
        mean over pairs of edit distance / max(len a, len b); all pairs, or max_pairs pairs
        drawn at random (seeded) when there are more
    frechet_distance(mu1, cov1, mu2, cov2) -> float
        |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))
    frechet_from_embeddings(x [n, d], y [m, d]) -> float
    knn_precision_recall(real, fake, k=3) -> (precision, recall)   Kynkaanniemi et al. 2019
    plot_codon_usage(generated, reference, path) -> Path           PNG, codons grouped by amino acid

The Frechet distance and precision / recall compare mean-pooled last hidden states of OUR
exported model (``scoring.embed``), not a hub model; with fewer samples than hidden units
the covariances are singular and the distance is biased upwards: compare values computed
with the same sample sizes. Sequences are read by the project's tokenizer
(helm_scale.tokenizer: normalised, codons in frame from the first base).
"""
from __future__ import annotations

import random
from itertools import combinations
from pathlib import Path

import numpy as np

from helm_scale.codon import CODONS, GENETIC_CODE, START_CODON, STOP_CODONS
from helm_scale.evaluate.sequences import EvalInputError
from helm_scale.tokenizer import BASES, read_bases

_STOPS = [CODONS.index(c) for c in STOP_CODONS]


def gc_content(sequences: list[str]) -> float:
    bases = read_bases(sequences)
    lengths = bases.lengths
    if not lengths.any():
        raise EvalInputError("GC content of no nucleotides")
    is_gc = np.isin(bases.array, [BASES.index("G"), BASES.index("C")])
    gc = np.bincount(np.repeat(np.arange(len(bases)), lengths), weights=is_gc, minlength=len(bases))
    return float(np.mean(gc[lengths > 0] / lengths[lengths > 0]))


def codon_counts(sequences: list[str]) -> np.ndarray:
    index, _ = read_bases(sequences).codon_index()
    return np.bincount(index[index >= 0], minlength=64)


def codon_usage(sequences: list[str]) -> np.ndarray:
    counts = codon_counts(sequences)
    if counts.sum() == 0:
        raise EvalInputError("codon usage of sequences with no whole A/C/G/T codon")
    return counts / counts.sum()


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.asarray(p, float) / np.sum(p), np.asarray(q, float) / np.sum(q)
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))
    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def valid_orfs(sequences: list[str]) -> np.ndarray:
    bases = read_bases(sequences)
    index, offsets = bases.codon_index()
    n = len(bases)
    first, last = np.full(n, -1), np.full(n, -1)
    some = np.flatnonzero(np.diff(offsets) > 0)
    first[some], last[some] = index[offsets[some]], index[offsets[some + 1] - 1]
    stops = np.bincount(np.repeat(np.arange(n), np.diff(offsets)), weights=np.isin(index, _STOPS), minlength=n)
    return ((bases.lengths >= 6) & (bases.lengths % 3 == 0) & ~bases.non_acgt
            & (first == CODONS.index(START_CODON)) & np.isin(last, _STOPS) & (stops == 1))


def is_valid_orf(seq: str) -> bool:
    return bool(valid_orfs([seq])[0])


def levenshtein(a: str, b: str) -> int:
    """Edit distance (unit insert / delete / substitute), one big-int word per column."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    full, top = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = full, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & full) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & full
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv
    return score


def _pairs(n: int, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    total = n * (n - 1) // 2
    if total <= max_pairs:
        return list(combinations(range(n), 2))
    rng, seen = random.Random(seed), set()
    while len(seen) < max_pairs:
        i, j = rng.sample(range(n), 2)
        seen.add((min(i, j), max(i, j)))
    return sorted(seen)


def diversity(sequences: list[str], max_pairs: int = 1000, seed: int = 0) -> float:
    if len(sequences) < 2:
        raise EvalInputError("diversity needs at least 2 sequences")
    scores = [levenshtein(sequences[i], sequences[j]) / max(len(sequences[i]), len(sequences[j]), 1)
              for i, j in _pairs(len(sequences), max_pairs, seed)]
    return float(np.mean(scores))


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance of two Gaussians. tr((cov1 cov2)^(1/2)) is computed as the sum of
    square roots of the eigenvalues of the symmetric PSD s cov2 s, s = cov1^(1/2) (same
    spectrum, no complex sqrtm)."""
    mu1, mu2 = np.asarray(mu1, float), np.asarray(mu2, float)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, float)), np.atleast_2d(np.asarray(cov2, float))
    s = _psd_sqrt(cov1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s @ cov2 @ s), 0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)
    return max(value, 0.0)


def frechet_from_embeddings(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or len(y) < 2:
        raise EvalInputError("the Frechet distance needs at least 2 sequences on each side")
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision: share of fake points inside some real point's k-NN ball (radius = distance
    to its k-th nearest other real point); recall: the same with the roles swapped."""
    import torch
    real, fake = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    if len(real) <= k or len(fake) <= k:
        raise EvalInputError(f"k-NN precision / recall needs more than k = {k} points on each side")

    def covered(support, query):
        radius = torch.cdist(support, support).kthvalue(k + 1, dim=1).values  # +1: itself
        return float((torch.cdist(query, support) <= radius[None]).any(dim=1).double().mean())
    return covered(real, fake), covered(fake, real)


def _sample(seqs: list[str], n: int, seed: int) -> list[str]:
    return seqs if len(seqs) <= n else random.Random(seed).sample(seqs, n)


def generation_metrics(generated: list[str], reference: list[str], exported=None,
                       max_pairs: int = 1000, max_embed: int = 1000, seed: int = 0,
                       batch_size: int = 16, progress: bool = False) -> dict:
    """Every metric of the module docstring, for generated vs reference sequences."""
    if not generated or not reference:
        raise EvalInputError("need generated and reference sequences")
    gen_usage, ref_usage = codon_usage(generated), codon_usage(reference)
    gc_gen, gc_ref = gc_content(generated), gc_content(reference)
    out = {
        "n_generated": len(generated), "n_reference": len(reference),
        "gc_content": {"generated": gc_gen, "reference": gc_ref, "difference": gc_gen - gc_ref},
        "codon_usage_js_divergence": js_divergence(gen_usage, ref_usage),
        "valid_orf_fraction": {"generated": float(np.mean(valid_orfs(generated))),
                               "reference": float(np.mean(valid_orfs(reference)))},
        "mean_length_nt": {"generated": float(np.mean([len(s) for s in generated])),
                           "reference": float(np.mean([len(s) for s in reference]))},
        "diversity": {"generated": diversity(generated, max_pairs, seed) if len(generated) > 1 else None,
                      "reference": diversity(_sample(reference, 2000, seed), max_pairs, seed)
                      if len(reference) > 1 else None,
                      "max_pairs": max_pairs},
        "definitions": {
            "codon_usage_js_divergence": "Jensen-Shannon divergence (base 2, 0..1) of pooled in-frame codon frequencies",
            "diversity": "mean edit distance / max(length) over sequence pairs (sampled above max_pairs)",
            "valid_orf_fraction": "ATG start, length multiple of 3, exactly one stop codon and it is last",
            "gc_content": "mean over sequences of the G+C fraction",
        },
    }
    if exported is not None:
        from helm_scale.evaluate.lm.scoring import embed
        real = _sample(reference, max_embed, seed)
        fake = _sample(generated, max_embed, seed + 1)
        e_real = embed(exported, real, batch_size, progress)
        e_fake = embed(exported, fake, batch_size, progress)
        out["frechet_distance"] = frechet_from_embeddings(e_real, e_fake)
        k = 3
        if min(len(real), len(fake)) > k:
            out["precision"], out["recall"] = knn_precision_recall(e_real, e_fake, k)
        out["embedding"] = {"n_reference": len(real), "n_generated": len(fake), "dim": int(e_real.shape[1]),
                            "model_step": exported.step, "pooling": "mean of last hidden states",
                            "knn_k": k}
    return out


def plot_codon_usage(generated: list[str], reference: list[str], path: str | Path) -> Path:
    """Bar chart of the 64 codon frequencies, grouped by amino acid, generated vs reference."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvalInputError("the codon-usage plot needs matplotlib: pip install 'helm-scale[eval]'") from None
    order = sorted(range(64), key=lambda i: (GENETIC_CODE[CODONS[i]] == "*", GENETIC_CODE[CODONS[i]], CODONS[i]))
    gen, ref = codon_usage(generated)[order], codon_usage(reference)[order]
    x = np.arange(64)
    fig, ax = plt.subplots(figsize=(16, 4.5))
    ax.bar(x - 0.2, ref, 0.4, label=f"reference (n={len(reference)})")
    ax.bar(x + 0.2, gen, 0.4, label=f"generated (n={len(generated)})")
    ax.set_xticks(x, [f"{CODONS[i]}\n{GENETIC_CODE[CODONS[i]]}" for i in order], fontsize=6)
    ax.set_ylabel("codon frequency")
    ax.set_title(f"Codon usage (Jensen-Shannon divergence {js_divergence(gen, ref):.4f} bits)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

