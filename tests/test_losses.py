"""HXE and friends against an independent float64 brute force (single process).

The oracle below walks ``tree.parents`` itself -- it never uses the package's tables,
``CodonTree.paths`` or ``membership`` -- and differentiates with plain autograd.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helm_scale.codon import Vocabulary, build_tree
from helm_scale.losses import OBJECTIVES, LossConfig, build_loss

VOCAB = Vocabulary.default()
PADDED = 72  # 69 tokens padded to a multiple of 4 (TP = 4)


def _ancestors(tree, token):
    node, out = tree.leaf_of[token], []
    while node != -1:
        out.append(node)
        node = tree.parents[node]
    return out  # leaf ... root


def oracle(cfg: LossConfig, tree, logits, targets, mask, aa_class, start_stop):
    """Loss, gradient and metrics by explicit sums over the tree, in float64."""
    z = logits.detach().double().reshape(-1, logits.shape[-1]).requires_grad_(True)
    t, m = targets.reshape(-1).tolist(), mask.reshape(-1).double()
    p = torch.softmax(z, dim=-1)
    vocab_size = len(tree.leaf_of)
    leaves = {n: [] for n in range(len(tree.names))}
    for tok in range(vocab_size):
        for node in _ancestors(tree, tok):
            leaves[node].append(tok)
    depth = {n: len(_ancestors_of_node(tree, n)) - 1 for n in leaves}
    norm = sum(math.exp(-cfg.alpha * d) for d in depth.values()) if cfg.normalized else 1.0
    lam = {n: math.exp(-cfg.alpha * d) / norm for n, d in depth.items()}
    height = max(depth.values())
    # The softmax runs over the padded vocabulary, as the output layer does; padding is
    # in no group, so the root's mass is the whole row (P(root) = 1, as HELM defines it).
    leaves[0] = list(range(logits.shape[-1]))
    mass = lambda i, n: p[i, leaves[n]].sum()  # noqa: E731
    losses, levels = [], torch.zeros(height + 1, dtype=torch.float64)
    for i, target in enumerate(t):
        if m[i] == 0:
            losses.append(z[i].sum() * 0)
            continue
        path = _ancestors(tree, target)  # leaf .. root
        hxe = 0
        for node, parent in zip(path[:-1], path[1:]):
            term = -lam[node] * torch.log(mass(i, node) / mass(i, parent))
            hxe = hxe + term
            levels[depth[node]] += term.item() * m[i].item()
        aa = -torch.log(mass(i, path[1] if len(path) > 2 else path[0]))
        if cfg.name == "soft":
            anc = set(path[:-1])
            w = torch.zeros(vocab_size, dtype=torch.float64)
            for j in range(vocab_size):
                common = [n for n in _ancestors(tree, j) if n in anc]
                if j == target:
                    w[j] = 1.0
                elif common:
                    w[j] = math.exp(-cfg.beta * (height - depth[common[0]]) / height)
            y = w / w.sum()
            value = -(y * torch.log(p[i, :vocab_size])).sum()
        else:
            value = {"xe": -torch.log(p[i, target]), "hxe": hxe, "aa": aa,
                     "hxe+aa": hxe + cfg.aa_weight * aa}[cfg.name]
        losses.append(value * m[i])
    loss = torch.stack(losses).sum() / m.sum().clamp_min(1.0)
    loss.backward()
    pred = z.argmax(-1)
    tt = torch.tensor(t)
    t = [x if w else 0 for x, w in zip(t, m.tolist())]
    tt = torch.tensor(t)
    syn = torch.tensor([aa_class[a] == aa_class[b] for a, b in zip(pred.tolist(), t)]).double()
    ss = torch.tensor([float(x in start_stop) for x in t]).double() * m
    metrics = {"codon_accuracy": ((pred == tt).double() * m).sum() / m.sum(),
               "synonymous_accuracy": (syn * m).sum() / m.sum(),
               "start_stop_accuracy": (syn * ss).sum() / ss.sum().clamp_min(1e-12)}
    for d in range(1, height + 1):
        metrics[f"level{d}_term"] = levels[d] / m.sum()
    return loss.detach(), z.grad.reshape(logits.shape), metrics


def _ancestors_of_node(tree, node):
    out = []
    while node != -1:
        out.append(node)
        node = tree.parents[node]
    return out


def amino_acid_classes():
    padded = [a if a is not None else tok for tok, a in zip(VOCAB.tokens, VOCAB.amino_acid_of)]
    padded += [f"pad{i}" for i in range(PADDED - len(VOCAB))]
    start_stop = {i for i, a in enumerate(VOCAB.amino_acid_of) if a in ("M", "*")}
    return padded, start_stop


def make_batch(seed, shape=(4, 12), scale=3.0):
    """Random logits with padding entries, targets that include specials, start and stop,
    and masked positions whose targets are garbage (-100, padding ids)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, PADDED, generator=g, dtype=torch.float64) * scale
    targets = torch.randint(0, len(VOCAB), shape, generator=g)
    flat = targets.view(-1)
    flat[:6] = torch.tensor([VOCAB.pad_id, VOCAB.eos_id, VOCAB.index["ATG"], VOCAB.index["TAA"],
                             VOCAB.index["TGA"], VOCAB.cls_id])
    mask = torch.rand(shape, generator=g) > 0.25
    mask.view(-1)[:6] = True
    targets[~mask] = torch.where(torch.rand(shape, generator=g) > 0.5, -100, PADDED - 1)[~mask]
    # a few rows predict their target exactly, so the accuracies are not all zero
    for i in range(0, flat.numel(), 5):
        if mask.view(-1)[i]:
            logits.view(-1, PADDED)[i, flat[i]] += 20
    return logits, targets, mask


CASES = ([LossConfig("hxe", alpha=a, normalized=n) for a in (0.0, 0.2, 0.4, 0.6)
          for n in (True, False)]
         + [LossConfig(name) for name in ("xe", "aa", "hxe+aa")]
         + [LossConfig("soft", beta=b) for b in (0.0, 3.0, 10.0)])


def check_against_oracle(cfg, tree_kind, logits, targets, mask, out, grad, atol):
    tree = build_tree(VOCAB, tree_kind, cfg.tree_seed)
    classes, start_stop = amino_acid_classes()
    loss, ref_grad, ref_metrics = oracle(cfg, tree, logits, targets, mask, classes, start_stop)
    scale = max(1.0, float(ref_grad.abs().max()))
    assert abs(out.loss.item() - loss.item()) <= atol * max(1.0, abs(float(loss))), (cfg, tree_kind)
    torch.testing.assert_close(grad.double(), ref_grad, atol=atol * scale, rtol=0,
                               msg=lambda m: f"{cfg} {tree_kind}: {m}")
    for key, value in ref_metrics.items():
        assert abs(float(out.metrics[key]) - float(value)) <= max(atol, 1e-6), (key, cfg)


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


@pytest.mark.parametrize("name", ["hxe+aa", "soft"])
def test_gradcheck_float64(name):
    logits, targets, mask = make_batch(seed=4, shape=(1, 7))
    loss_fn = build_loss(LossConfig(name, alpha=0.6), VOCAB, PADDED)
    loss_fn.reusable_backward = True  # gradcheck runs backward twice on one graph
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, targets, mask).loss, (z,))


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



def blocked_tree():
    """64 tokens in 8 contiguous blocks of 8 (groups g0..g7 under a and b): the k-mer
    layout that takes the reshaped (blocked) group-sum path."""
    from helm_scale.codon import CodonTree
    names, parents = ["root", "a", "b"], [-1, 0, 0]
    for i in range(8):
        names.append(f"g{i}"), parents.append(1 + i % 2)
    leaf_of = []
    for i in range(64):
        leaf_of.append(len(names))
        names.append(f"t{i}"), parents.append(3 + i // 8)
    return CodonTree("blocked", tuple(names), tuple(parents), tuple(leaf_of))


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
