"""Probe heads on synthetic features whose answer is known: ridge recovers a linear
function of codon counts, the TextCNN finds planted motifs and ignores padding, and the
per-token heads learn what their receptive field allows."""
import numpy as np
import pytest
import torch

from helm_scale.evaluate.probes.heads import (
    FitSpec,
    TextCNN,
    fit_ridge,
    padded_batch,
    predict_textcnn,
    predict_tokens,
    train_textcnn,
    train_token_head,
)
from helm_scale.evaluate.probes.scores import spearman


def _split(n):
    idx = np.random.default_rng(0).permutation(n)
    return idx[: int(0.8 * n)], idx[int(0.8 * n): int(0.9 * n)], idx[int(0.9 * n):]


def test_ridge_recovers_a_linear_function_of_codon_counts():
    rng = np.random.default_rng(0)
    n = 400
    counts = np.stack([np.bincount(rng.integers(0, 64, rng.integers(20, 80)), minlength=64) for _ in range(n)])
    y = counts @ rng.normal(size=64) + rng.normal(scale=0.5, size=n)
    tr, va, te = _split(n)
    probe = fit_ridge(counts[tr], y[tr], counts[va], y[va])
    assert spearman(probe.predict(counts[te]), y[te]) > 0.9
    # Pure noise features: alpha goes to the strong end and rho stays near 0.
    noise = rng.normal(size=(n, 64))
    weak = fit_ridge(noise[tr], y[tr], noise[va], y[va])
    assert abs(spearman(weak.predict(noise[te]), y[te])) < 0.4


def _motif_data(n=320, dim=6, seed=0):
    """One-hot tokens over `dim` symbols; y = 1 if motif 0-1-2 is present + 0.5 if 3-4-5 is."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 30, n)
    tokens = torch.zeros(n, 30, dim, dtype=torch.float16)
    y = np.zeros(n)
    for i, length in enumerate(lengths):
        seq = rng.integers(0, dim, length)
        for motif, weight in (((0, 1, 2), 1.0), ((3, 4, 5), 0.5)):
            if rng.random() < 0.5:
                at = rng.integers(0, length - 2)
                seq[at:at + 3] = motif
        present = [any(tuple(seq[j:j + 3]) == m for j in range(length - 2)) for m in ((0, 1, 2), (3, 4, 5))]
        y[i] = present[0] + 0.5 * present[1]
        tokens[i, np.arange(length), seq] = 1.0
    return tokens, torch.as_tensor(lengths), y


def test_textcnn_finds_planted_motifs():
    tokens, lengths, y = _motif_data()
    tr, va, te = _split(len(y))
    model, info = train_textcnn(tokens, lengths, (y - y.mean()) / y.std(), tr, va,
                                FitSpec(lr=3e-3, max_epochs=40, patience=8), seed=0, channels=16, dropout=0.0)
    assert spearman(predict_textcnn(model, tokens, lengths, te), y[te]) > 0.8
    assert 1 <= info["best_epoch"] <= info["epochs"] <= 40


def test_textcnn_is_blind_to_padding_and_seeded():
    torch.manual_seed(0)
    model = TextCNN(8, channels=4, dropout=0.0).eval()
    tokens = torch.zeros(2, 20, 8)
    tokens[0, :4] = torch.randn(4, 8)  # shorter than the widest kernel
    tokens[1] = torch.randn(20, 8)
    lengths = torch.tensor([4, 20])
    alone = model(*padded_batch(tokens, lengths, [0], 5))
    together = model(*padded_batch(tokens, lengths, [0, 1], 5))
    torch.testing.assert_close(alone[0], together[0])
    t, lens, y = _motif_data(n=40)
    spec = FitSpec(max_epochs=2)
    a = predict_textcnn(train_textcnn(t, lens, y, np.arange(30), np.arange(30, 40), spec, 1, 8)[0], t, lens, [0, 1])
    b = predict_textcnn(train_textcnn(t, lens, y, np.arange(30), np.arange(30, 40), spec, 1, 8)[0], t, lens, [0, 1])
    np.testing.assert_array_equal(a, b)


def test_token_heads_learn_what_they_can_see():
    """Label = the previous token's symbol: a conv head sees it, a linear head cannot."""
    rng = np.random.default_rng(0)
    n, width, dim = 200, 24, 4
    seqs = rng.integers(0, dim, (n, width))
    tokens = torch.zeros(n, width, dim, dtype=torch.float16)
    tokens[np.arange(n)[:, None], np.arange(width)[None], seqs] = 1.0
    lengths = torch.full((n,), width)
    labels = torch.full((n, width), -100, dtype=torch.long)
    labels[:, 1:] = torch.as_tensor(seqs[:, :-1])
    tr, va, te = _split(n)
    spec = FitSpec(lr=2e-2, max_epochs=15, patience=3)

    def test_accuracy(kind):
        head, _ = train_token_head(tokens, lengths, labels, dim, tr, va, spec, seed=0, kind=kind)
        pred = torch.stack(predict_tokens(head, tokens, lengths, te))
        keep = labels[te] != -100
        return float((pred[keep] == labels[te][keep]).float().mean())

    assert test_accuracy("conv") > 0.95
    assert test_accuracy("linear") < 0.4  # chance is 0.25: its own token says nothing


def test_fit_spec_rejects_nonsense():
    with pytest.raises(ValueError):
        FitSpec(patience=0)
