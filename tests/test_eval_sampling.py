import math

import pytest
import torch

from helm_scale.codon import Vocabulary
from helm_scale.evaluate.generation.sampling import (
    allowed_tokens,
    filter_logits,
    generate,
    generate_records,
)
from helm_scale.evaluate.sequences import EvalInputError
from helm_scale.export import load_exported
from helm_scale.tokenizer import SequenceError
from tests.eval_utils import tiny_export

# Hand-made distribution over 8 entries: 1..5 may be drawn, 0, 6 and 7 (a "special" and
# two padding entries) may not, and carry the largest logits to prove it.
ALLOWED = torch.tensor([False, True, True, True, True, True, False, False])
PROBS = [0.4, 0.3, 0.15, 0.1, 0.05]
LOGITS = torch.tensor([[50.0] + [math.log(p) for p in PROBS] + [60.0, 70.0]])


def _kept(z):
    return (z[0] > float("-inf")).nonzero().flatten().tolist()


def test_disallowed_entries_are_never_kept():
    z = filter_logits(LOGITS, ALLOWED)
    assert _kept(z) == [1, 2, 3, 4, 5]
    assert torch.softmax(z, -1)[0, 1:6].tolist() == pytest.approx(PROBS)


@pytest.mark.parametrize("top_k, kept", [(1, [1]), (2, [1, 2]), (4, [1, 2, 3, 4]), (5, [1, 2, 3, 4, 5]),
                                         (50, [1, 2, 3, 4, 5])])
def test_top_k(top_k, kept):
    z = filter_logits(LOGITS, ALLOWED, top_k=top_k)
    assert _kept(z) == kept
    p = torch.softmax(z, -1)[0]
    assert p[kept].tolist() == pytest.approx([PROBS[i - 1] / sum(PROBS[j - 1] for j in kept) for i in kept])


@pytest.mark.parametrize("top_p, kept", [(0.01, [1]), (0.39, [1]), (0.41, [1, 2]), (0.69, [1, 2]),
                                         (0.71, [1, 2, 3]), (0.84, [1, 2, 3]), (0.86, [1, 2, 3, 4]),
                                         (1.0, [1, 2, 3, 4, 5])])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p, kept):
    assert _kept(filter_logits(LOGITS, ALLOWED, top_p=top_p)) == kept


def test_top_k_then_top_p_and_temperature():
    # top-k 3 renormalises to (0.4, 0.3, 0.15) / 0.85; top-p 0.8 then needs 0.47 + 0.35 = 0.82.
    assert _kept(filter_logits(LOGITS, ALLOWED, top_k=3, top_p=0.8)) == [1, 2]
    hot = torch.softmax(filter_logits(LOGITS, ALLOWED, temperature=2.0), -1)[0, 1:6]
    root = [p ** 0.5 for p in PROBS]
    assert hot.tolist() == pytest.approx([r / sum(root) for r in root])
    with pytest.raises(EvalInputError):
        filter_logits(LOGITS, ALLOWED, temperature=0.0)


def test_draws_follow_the_filtered_distribution():
    z = filter_logits(LOGITS.expand(20000, -1), ALLOWED, top_k=3)
    draws = torch.multinomial(torch.softmax(z, -1), 1, generator=torch.Generator().manual_seed(0)).flatten()
    counts = torch.bincount(draws, minlength=8).double() / len(draws)
    assert counts[[0, 4, 5, 6, 7]].sum() == 0
    assert counts[1:4].tolist() == pytest.approx([0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85], abs=0.015)


def test_allowed_tokens_are_the_codons_and_eos():
    vocab = Vocabulary.default()
    allowed = allowed_tokens(vocab, 72)
    assert int(allowed.sum()) == 65 and bool(allowed[vocab.eos_id])
    assert not any(bool(allowed[i]) for i in vocab.special_ids if i != vocab.eos_id)
    assert not allowed[69:].any()


def _steer(exported, tokens, scale=3.0):
    """Make the model's last hidden state a fixed vector (final norm weight 0, bias b) and give
    each steered token its own axis of the tied embedding: those tokens share the largest
    logit (scale^2) at every position, all others stay near 0."""
    model, vocab = exported.model, exported.vocab
    with torch.no_grad():
        emb = model.word_embeddings.weight
        emb.normal_(0, 0.05)
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
        for axis, t in enumerate(tokens):
            row = vocab.index[t] if isinstance(t, str) else t
            emb[row] = 0.0
            emb[row, axis] = scale
            model.final_norm.bias[axis] = scale
    return exported


def test_generation_stops_at_eos_and_never_draws_specials_or_padding(tmp_path):
    exported = load_exported(tiny_export(tmp_path / "ex"))
    vocab = exported.vocab
    # <pad> and a padding entry (70) would win the argmax: the best allowed token must be drawn.
    _steer(exported, [vocab.pad_id, 70, "GCC"])
    seqs = generate(exported, 3, top_k=1, max_codons=6, progress=False)
    assert seqs == ["ATGGCCGCCGCCGCCGCC"] * 3
    # GCC and <eos> share the mass: sequences end at <eos> after a geometric number of codons.
    _steer(exported, ["GCC", "<eos>"])
    records = generate_records(exported, 40, top_k=2, top_p=1.0, prefix="ATGAAA", max_codons=5,
                               seed=1, batch_size=7, progress=False)
    assert all(r.sequence.startswith("ATGAAA") and set(r.sequence[6:]) <= set("GC") for r in records)
    assert all(r.codons == len(r.sequence) // 3 for r in records)
    ended = [r for r in records if r.ended]
    # P(<eos>) = 1/2 per draw, 3 draws: about 1/8 of the sequences reach max_codons unended.
    assert 25 < len(ended) < 40 and {r.codons for r in ended} == {2, 3, 4}
    assert all(r.codons == 5 for r in records if not r.ended)


def test_generation_is_seeded_and_checks_its_arguments(tmp_path):
    exported = load_exported(tiny_export(tmp_path / "ex"))
    a = generate(exported, 5, max_codons=20, seed=3, progress=False)
    assert a == generate(exported, 5, max_codons=20, seed=3, progress=False)
    assert a != generate(exported, 5, max_codons=20, seed=4, progress=False)
    assert all(set(s) <= set("ACGT") and len(s) % 3 == 0 and s.startswith("ATG") for s in a)
    for bad in ({"prefix": "ATGA"}, {"prefix": "ATGNNN"}, {"max_codons": 64}, {"temperature": 0},
                {"top_p": 0.0}, {"top_p": 1.5}, {"prefix": "ATG" * 5, "max_codons": 5}):
        with pytest.raises(SequenceError if "prefix" in bad and len(bad) == 1 else EvalInputError):
            generate(exported, 1, progress=False, **bad)
    mlm = load_exported(tiny_export(tmp_path / "mlm", objective="mlm"))
    with pytest.raises(EvalInputError, match="causal"):
        generate(mlm, 1, progress=False)


@pytest.mark.parametrize("model", [{}, {"position": "rotary"}, {"tie_embeddings": False, "num_layers": 2},
                                   {"arch": "lstm", "num_layers": 2}])
def test_cached_decoding_matches_the_full_forward_at_every_step(tmp_path, model):
    from helm_scale.evaluate.generation.decoding import FullForwardDecoder, decoder_for
    exported = load_exported(tiny_export(tmp_path / "ex", std=0.3, **model))
    net = exported.model
    decoder = decoder_for(net)
    assert not isinstance(decoder, FullForwardDecoder)
    rng = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 69, (5, 4), generator=rng)
    with torch.no_grad():
        logits = decoder.start(ids)
        assert torch.allclose(logits, net(ids)[:, -1], atol=1e-5)
        for step in range(12):  # rows leave the batch as they would at <eos>
            keep = torch.arange(len(ids)) if step % 4 else torch.arange(len(ids))[1:]
            if len(keep) == 0:
                break
            nxt = torch.randint(5, 69, (len(keep),), generator=rng)
            ids = torch.cat([ids[keep], nxt[:, None]], dim=1)
            logits = decoder.step(nxt, keep)
            assert torch.allclose(logits, net(ids)[:, -1], atol=1e-5), step
