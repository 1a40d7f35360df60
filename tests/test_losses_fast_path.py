"""The fast HXE path's memory contract and its handling of strided and bf16 logits.

Exactness against the float64 brute force lives in test_losses / test_losses_parallel;
these tests pin what the speed work relies on: what autograd keeps for backward, and
that layouts the fast path special-cases give the contiguous result.
"""
from __future__ import annotations

import pytest
import torch

from helm_scale.losses import LossConfig, build_loss
from tests.loss_oracle import PADDED, VOCAB, make_batch


def _saved_storages(fn, z, targets, mask):
    """{storage pointer: (bytes, shape)} of everything autograd saves for backward."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), tuple(t.shape))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(z, targets, mask)
    return out, saved


@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize("name", ["hxe", "soft"])
def test_backward_keeps_one_softmax_buffer_and_tokens_x_height_beyond_it(overwrite, name):
    logits, targets, mask = make_batch(seed=30, shape=(8, 64))
    rows = targets.numel()
    fn = build_loss(LossConfig(name, overwrite_logits=overwrite), VOCAB, PADDED)
    hidden = torch.zeros(1, requires_grad=True)
    z = logits.float() + hidden  # a non-leaf, as the output layer's logits are
    z.retain_grad()
    out, saved = _saved_storages(fn, z, targets, mask)
    big = {p: size for p, (size, shape) in saved.items() if size >= rows * PADDED * 4}
    if overwrite:  # the softmax lives in the caller's logits buffer
        assert list(big) == [z.untyped_storage().data_ptr()]
    else:  # one new fp32 tokens x vocab buffer, which becomes the gradient
        assert len(big) == 1 and z.untyped_storage().data_ptr() not in big
    small = sum(size for p, (size, _) in saved.items() if p not in big)
    # tokens x height numbers (bag weights and columns, leaf, target, masks): far inside
    # the budget of O(tokens x groups)
    assert small <= rows * (fn.num_groups + 1) * 4, small
    out.loss.backward()
    assert z.grad.shape == z.shape and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("overwrite", [True, False])
def test_strided_logits_match_contiguous_and_bf16_buffers_are_never_written(dtype, overwrite):
    logits, targets, mask = make_batch(seed=31)
    cfg = LossConfig("hxe+aa", overwrite_logits=overwrite)
    ref_z = logits.to(dtype).clone().requires_grad_(True)
    ref = build_loss(LossConfig("hxe+aa"), VOCAB, PADDED)(ref_z, targets, mask)
    ref.loss.backward()

    wide = torch.cat([logits, torch.randn_like(logits)], dim=-1).to(dtype)
    transposed = logits.to(dtype).transpose(0, 1).contiguous().transpose(0, 1)
    for buffer in (wide[..., :PADDED], transposed):
        assert not buffer.is_contiguous()
        before = buffer.clone()
        z = buffer.detach().requires_grad_(True)
        out = build_loss(cfg, VOCAB, PADDED)(z, targets, mask)
        out.loss.backward()
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(z.grad.float(), ref_z.grad.float(), rtol=1e-5,
                                   atol=1e-6 if dtype == torch.float32 else 1e-3)
        # strided or bf16 logits are cast or copied to a new buffer, never overwritten
        assert torch.equal(z.detach(), before)


def test_tied_maxima_count_as_hits_for_both_accuracies():
    # Without an argmax the hit rules are: exact when the target reaches the row maximum,
    # synonymous when any entry of the target's class does; so an exact hit is always
    # a synonymous one, whichever tied entry comes first.
    leu, leu_synonym, lys = (VOCAB.index[c] for c in ("CTG", "TTA", "AAA"))
    logits = torch.zeros(3, PADDED)
    logits[0, [leu_synonym, lys]] = 5.0  # a synonym tied with another class
    logits[1, [leu, lys]] = 5.0  # the target itself tied with another class
    logits[2, lys] = 5.0  # another class alone on top
    targets = torch.full((3,), leu)
    out = build_loss(LossConfig("hxe"), VOCAB, PADDED)(logits, targets, torch.ones(3))
    assert float(out.metrics["codon_accuracy"]) == pytest.approx(1 / 3)
    assert float(out.metrics["synonymous_accuracy"]) == pytest.approx(2 / 3)
