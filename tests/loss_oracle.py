"""An independent float64 brute force of HXE and friends, the oracle of the loss tests
(test_losses, test_losses_parallel), and the batches and cases they share.

The oracle walks ``tree.parents`` itself -- it never uses the package's tables,
``CodonTree.paths`` or ``membership`` -- and differentiates with plain autograd.
"""
from __future__ import annotations

import math

import torch

from helm_scale.codon import CodonTree, Vocabulary, build_tree
from helm_scale.losses import LossConfig

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


def blocked_tree():
    """64 tokens in 8 contiguous blocks of 8 (groups g0..g7 under a and b): the k-mer
    layout that takes the reshaped (blocked) group-sum path."""
    names, parents = ["root", "a", "b"], [-1, 0, 0]
    for i in range(8):
        names.append(f"g{i}"), parents.append(1 + i % 2)
    leaf_of = []
    for i in range(64):
        leaf_of.append(len(names))
        names.append(f"t{i}"), parents.append(3 + i // 8)
    return CodonTree("blocked", tuple(names), tuple(parents), tuple(leaf_of))
