"""HXE and friends against an independent float64 brute force (single process; the
oracle is tests/loss_oracle.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helm_scale.codon import build_tree
from helm_scale.losses import OBJECTIVES, LossConfig, build_loss
from tests.loss_oracle import CASES, PADDED, VOCAB, blocked_tree, check_against_oracle, make_batch, oracle


@pytest.mark.parametrize("tree_kind", ["helm", "random", "flat"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_objective_matches_brute_force(tree_kind, dtype):
    logits, targets, mask = make_batch(seed=1)
    for cfg in CASES:
        cfg = LossConfig(**{**cfg.__dict__, "tree": tree_kind})
        z = logits.to(dtype).clone().requires_grad_(True)
        out = build_loss(cfg, VOCAB, PADDED)(z, targets, mask)
        out.loss.backward()
        check_against_oracle(cfg, tree_kind, z.detach(), targets, mask, out, z.grad,
                             1e-10 if dtype == torch.float64 else 2e-5)


def test_bf16_logits_within_bf16_tolerance():
    logits, targets, mask = make_batch(seed=2)
    for cfg in (LossConfig("hxe", alpha=0.4), LossConfig("soft"), LossConfig("hxe+aa")):
        z = logits.bfloat16().requires_grad_(True)
        out = build_loss(cfg, VOCAB, PADDED)(z, targets, mask)
        out.loss.backward()
        assert z.grad.dtype == torch.bfloat16
        # the oracle sees the same bf16-rounded logits; the remaining error is the bf16
        # rounding of the returned gradient
        check_against_oracle(cfg, "helm", z.detach(), targets, mask, out, z.grad, 1e-2)


def test_flat_tree_alpha_zero_is_cross_entropy_scaled_by_node_count():
    logits, targets, mask = make_batch(seed=3)
    tree = build_tree(VOCAB, "flat")
    ce = F.cross_entropy(logits.reshape(-1, PADDED), targets.reshape(-1).clamp_min(0),
                         reduction="none")
    ce = (ce * mask.reshape(-1)).sum() / mask.sum()
    for normalized, factor in ((True, tree.num_nodes), (False, 1)):
        cfg = LossConfig("hxe", alpha=0.0, normalized=normalized, tree="flat")
        out = build_loss(cfg, VOCAB, PADDED)(logits, targets, mask)
        torch.testing.assert_close(out.loss * factor, ce, rtol=1e-12, atol=1e-12)
    assert tree.num_nodes == len(VOCAB) + 1


# fast_mode compares the gradient with finite differences along random directions (a few
# forwards); the whole Jacobian, one finite difference per logit (~1,000 forwards, ~8 CPU-s
# each), runs with the slow tests.
@pytest.mark.parametrize("fast_mode", [True, pytest.param(False, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["hxe+aa", "soft"])
def test_gradcheck_float64(name, fast_mode):
    logits, targets, mask = make_batch(seed=4, shape=(1, 7))
    loss_fn = build_loss(LossConfig(name, alpha=0.6), VOCAB, PADDED)
    loss_fn.reusable_backward = True  # gradcheck runs backward twice on one graph
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, targets, mask).loss, (z,), fast_mode=fast_mode)


def test_level_terms_add_up_to_hxe_and_metrics_agree_across_objectives():
    logits, targets, mask = make_batch(seed=5)
    hxe = build_loss(LossConfig("hxe", alpha=0.2), VOCAB, PADDED)(logits, targets, mask)
    levels = sum(v for k, v in hxe.metrics.items() if k.startswith("level"))
    torch.testing.assert_close(levels, hxe.loss.detach(), rtol=1e-12, atol=0)
    xe = build_loss(LossConfig("xe", alpha=0.2), VOCAB, PADDED)(logits, targets, mask)
    for key in hxe.metrics:
        if key != "loss":
            torch.testing.assert_close(xe.metrics[key], hxe.metrics[key])
    assert float(hxe.metrics["codon_accuracy"]) > 0
    assert float(hxe.sums["tokens"]) == float(mask.sum())


def test_all_masked_batch_gives_zero_loss_and_zero_gradient():
    logits, targets, _ = make_batch(seed=6)
    mask = torch.zeros(targets.shape, dtype=torch.bool)
    for name in OBJECTIVES:
        z = logits.float().requires_grad_(True)
        out = build_loss(LossConfig(name), VOCAB, PADDED)(z, torch.full_like(targets, -100), mask)
        out.loss.backward()
        assert out.loss.item() == 0.0 and torch.count_nonzero(z.grad) == 0
        assert all(torch.isfinite(v).all() for v in out.metrics.values())


def test_extreme_logits_stay_finite():
    logits, targets, mask = make_batch(seed=7, scale=1e4)
    for name in OBJECTIVES:
        z = logits.float().requires_grad_(True)
        out = build_loss(LossConfig(name), VOCAB, PADDED)(z, targets, mask)
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all(), name


def test_overwrite_logits_reuses_the_buffer_with_the_same_result():
    logits, targets, mask = make_batch(seed=8)
    logits = logits.float()
    ref = logits.clone().requires_grad_(True)
    out = build_loss(LossConfig("soft"), VOCAB, PADDED)(ref, targets, mask)
    out.loss.backward()
    buffer = logits.clone()
    saved = buffer.clone()
    hidden = torch.zeros(1, requires_grad=True)
    z = buffer + hidden  # a non-leaf, as the output layer's logits are
    fn = build_loss(LossConfig("soft", overwrite_logits=True), VOCAB, PADDED)
    z.retain_grad()
    out2 = fn(z, targets, mask)
    assert not torch.equal(z.detach(), saved)  # overwritten with the softmax numerators
    out2.loss.backward()
    torch.testing.assert_close(out2.loss, out.loss)
    torch.testing.assert_close(z.grad, ref.grad)
    assert torch.equal(buffer, saved)  # the caller's own tensor was never touched


def test_second_backward_through_the_overwritten_buffer_is_refused():
    logits, targets, mask = make_batch(seed=9)
    z = logits.clone().requires_grad_(True)
    out = build_loss(LossConfig("hxe"), VOCAB, PADDED)(z, targets, mask)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        out.loss.backward()


def test_soft_labels_keep_the_target_mass_and_never_touch_specials():
    from helm_scale.losses.tables import soft_label_weights, tree_tables
    tree = build_tree(VOCAB, "helm")
    u = soft_label_weights(tree, beta=10.0)
    tab = tree_tables(tree, len(VOCAB))
    member = tree.membership
    for target in (VOCAB.index["GCT"], VOCAB.index["TAA"], VOCAB.index["ATG"], VOCAB.eos_id):
        y = sum(u[target, j] * member[n] for j, n in enumerate(tree.paths[target]) if n >= 0)
        assert abs(y.sum() - 1) < 1e-12 and y.argmax() == target
        assert y[list(VOCAB.special_ids)].sum() == (1.0 if target == VOCAB.eos_id else 0.0)
        assert (y >= 0).all()
    assert tab.num_groups == len(tree.groups)


def test_configuration_is_validated():
    for bad in ({"name": "focal"}, {"tree": "oak"}, {"alpha": -1.0}, {"beta": float("nan")},
                {"name": "hxe+aa", "aa_weight": 0.0}):
        with pytest.raises(ValueError):
            LossConfig(**bad)
    fn = build_loss(LossConfig(tree="random", tree_seed=3), VOCAB, PADDED)
    assert fn.tree.kind == "random-3"
    logits, targets, mask = make_batch(seed=10)
    with pytest.raises(ValueError, match="real vocabulary"):
        fn(logits, targets.masked_fill(~mask, 0).masked_fill(mask, PADDED - 1), mask)
    with pytest.raises(ValueError, match="padded vocabulary"):
        fn(logits[..., :36], targets, mask)
    with pytest.raises(ValueError, match="leading shape"):
        fn(logits, targets[:, :3], mask[:, :3])
    with pytest.raises(ValueError, match="padded vocabulary"):
        build_loss(LossConfig(), VOCAB, len(VOCAB) - 1)


def test_blocked_vocabulary_layout_matches_brute_force():
    from helm_scale.losses import HierarchicalLoss
    tree = blocked_tree()
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 10, 64, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 64, (3, 10), generator=g)
    mask = torch.rand(3, 10, generator=g) > 0.2
    classes = [tree.parents[leaf] for leaf in tree.leaf_of]
    for cfg in (LossConfig("hxe", alpha=0.6), LossConfig("soft", beta=2.0), LossConfig("aa")):
        fn = HierarchicalLoss(tree, 64, cfg)
        assert fn._shard(fn._tables(logits.device, torch.float64), logits.device,
                         torch.float64, 0, 64).block == 8
        z = logits.clone().requires_grad_(True)
        out = fn(z, targets, mask)
        out.loss.backward()
        loss, grad, metrics = oracle(cfg, tree, logits, targets, mask, classes, set())
        torch.testing.assert_close(out.loss.detach(), loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(z.grad, grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(out.metrics["synonymous_accuracy"], metrics["synonymous_accuracy"])
