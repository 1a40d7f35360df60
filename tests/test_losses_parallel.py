"""Vocab-parallel HXE over real gloo process groups (TP = 2 and 4), against the float64
brute force (tests/loss_oracle.py) and against megatron-core's vocab_parallel_cross_entropy.
One process group per world size; every check runs inside it."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from helm_scale.losses import LossConfig, LossOutput, build_loss, metric_means, reduce_metric_sums
from tests.dist_utils import run_ranks
from tests.loss_oracle import CASES, PADDED, VOCAB, blocked_tree, check_against_oracle, make_batch

PARALLEL_CASES = [(cfg, "helm") for cfg in CASES] + [
    (LossConfig("hxe", alpha=0.4, tree="random", tree_seed=1), "random"),
    (LossConfig("soft", beta=3.0, tree="random", tree_seed=1), "random"),
    (LossConfig("hxe", alpha=0.0, tree="flat"), "flat")]


def _shard(full, rank, world):
    width = full.shape[-1] // world
    return full[..., rank * width:(rank + 1) * width]


def _megatron_ce(logits_shard, targets, mask, world):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
    z = logits_shard.clone().requires_grad_(True)  # it overwrites its input: give it a copy
    per_token = vocab_parallel_cross_entropy(z.clone(), targets.clamp_min(0))
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    return loss.detach(), z.grad


def _rank_checks(rank, world, batches):
    group = dist.group.WORLD
    out = {"cases": [], "megatron": None, "dp": None}
    logits, targets, mask = batches["main"]
    for cfg, dtype in [(cfg, torch.float64) for cfg, _ in PARALLEL_CASES] + [
            (LossConfig("hxe", alpha=0.4), torch.bfloat16),
            (LossConfig("soft"), torch.float32)]:
        z = _shard(logits, rank, world).to(dtype).contiguous().requires_grad_(True)
        res = build_loss(cfg, VOCAB, PADDED)(z, targets, mask, group=group)
        res.loss.backward()
        out["cases"].append((cfg, dtype, res.loss.detach(), res.metrics, z.grad))

    # alpha = 0 on the flat tree, normalised: megatron's CE divided by the node count.
    z = _shard(logits, rank, world).float().contiguous().requires_grad_(True)
    fn = build_loss(LossConfig("hxe", alpha=0.0, tree="flat"), VOCAB, PADDED)
    res = fn(z, targets, mask, group=group)
    res.loss.backward()
    ref_loss, ref_grad = _megatron_ce(_shard(logits, rank, world).float(), targets,
                                      mask.float(), world)
    out["megatron"] = (res.loss.detach(), z.grad, ref_loss, ref_grad, fn.tree.num_nodes)

    # The blocked (k-mer style) layout, sliced across ranks, against one device.
    from helm_scale.losses import HierarchicalLoss
    g = torch.Generator().manual_seed(13)
    kmer = torch.randn(40, 64, generator=g, dtype=torch.float64) * 3
    kmer_targets, kmer_mask = torch.randint(0, 64, (40,), generator=g), torch.ones(40)
    out["blocked"] = []
    for cfg in (LossConfig("hxe", alpha=0.6), LossConfig("soft", beta=2.0)):
        fn = HierarchicalLoss(blocked_tree(), 64, cfg)
        z = _shard(kmer, rank, world).contiguous().requires_grad_(True)
        res = fn(z, kmer_targets, kmer_mask, group=group)
        res.loss.backward()
        full = kmer.clone().requires_grad_(True)
        ref = fn(full, kmer_targets, kmer_mask)
        ref.loss.backward()
        out["blocked"].append((res.loss.detach(), ref.loss.detach(), z.grad,
                               _shard(full.grad, rank, world)))

    # Data parallel: each rank scores its own batch at TP = 1; reduced sums must equal
    # one device scoring all batches together.
    own = batches["dp"][rank]
    local = build_loss(LossConfig("hxe+aa"), VOCAB, PADDED)(*own)
    out["dp"] = metric_means(reduce_metric_sums(local.sums, group))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_matches_brute_force_and_megatron(world):
    dp_batches = [make_batch(seed=20 + r, shape=(2, 9)) for r in range(world)]
    dp_batches = [(z.float(), t, m) for z, t, m in dp_batches]
    results = run_ranks(_rank_checks, world, {"main": make_batch(seed=11), "dp": dp_batches})
    logits, targets, mask = make_batch(seed=11)

    for i, (cfg, dtype, loss, metrics, _) in enumerate(results[0]["cases"]):
        grad = torch.cat([r["cases"][i][4] for r in results], dim=-1)
        for r in results[1:]:  # the loss and every metric are identical on all TP ranks
            assert torch.equal(r["cases"][i][2], loss)
            assert all(torch.equal(r["cases"][i][3][k], v) for k, v in metrics.items())
        tree_kind = cfg.tree
        z = logits.to(dtype)
        atol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1e-2}[dtype]
        check_against_oracle(cfg, tree_kind, z, targets, mask, LossOutput(loss, metrics, {}, loss_sum=None),
                             grad, atol)

    ours, our_grad, ref, ref_grad, nodes = zip(*[r["megatron"] for r in results])
    torch.testing.assert_close(ours[0] * nodes[0], ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat(our_grad, -1) * nodes[0], torch.cat(ref_grad, -1),
                               rtol=1e-5, atol=1e-7)

    for r in results:
        for loss, ref_loss, grad, ref_grad in r["blocked"]:
            torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-13)

    all_z = torch.cat([b[0] for b in dp_batches])
    all_t = torch.cat([b[1] for b in dp_batches])
    all_m = torch.cat([b[2] for b in dp_batches])
    whole = build_loss(LossConfig("hxe+aa"), VOCAB, PADDED)(all_z, all_t, all_m)
    for key, value in whole.metrics.items():
        for r in results:
            torch.testing.assert_close(r["dp"][key].float(), value.float(), rtol=1e-5, atol=1e-6)
