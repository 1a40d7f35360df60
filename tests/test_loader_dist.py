"""The loader on real gloo process groups, with DataLoader workers.

Every expectation is a slice of one reference: the epoch's rows as a single process
reads them one row per batch. Rank r of a DP group of size D with micro-batch M, entered
at row c, must yield rows [c + s*D*M + r*M, ... + M) at step s, bit for bit, masks
included. Datasets have 2 uneven shards, fewer than ranks x workers.
"""
import pytest
import torch
import torch.distributed as dist

from helm_scale.data import LoaderConfig, build_loader
from helm_scale.shard_format import read_manifest
from tests.corpora import loader_dataset
from tests.dist_utils import run_ranks

MB = 4
CONFIGS = {"mlm_packed": dict(objective="mlm", pack=True),
           "clm_padded": dict(objective="clm", pack=False)}


def _cfg(dataset_dir, name, **kw):
    base = dict(dataset_dir=str(dataset_dir), seq_len=128, micro_batch_size=MB, seed=3,
                shuffle_window=64, num_workers=2, **CONFIGS[name])
    return LoaderConfig(**{**base, **kw})


def _epoch_in_lockstep(loader, world):
    """One epoch with a collective per step, as training does: a rank that ran dry early
    would leave its peers waiting, and the counts are compared after."""
    out = []
    for batch in loader:
        step = torch.tensor([1.0])
        dist.all_reduce(step)
        assert step.item() == world
        out.append(batch)
    counts = [None] * world
    dist.all_gather_object(counts, len(out))
    assert len(set(counts)) == 1, counts
    return out


def _dp_group_checks(rank, world, dataset_dir, states_from_one_rank):
    results = {}
    for name in CONFIGS:
        cfg = _cfg(dataset_dir, name, worker_start_method="fork")
        epoch0 = _epoch_in_lockstep(build_loader(cfg, rank, world), world)
        stopped = build_loader(cfg, rank, world)
        batches = iter(stopped)
        got = [next(batches) for _ in range(3)]
        state = stopped.state_dict()
        states = [None] * world
        dist.all_gather_object(states, state)
        assert all(s == state for s in states)  # any rank's state is the job's state
        resumed = build_loader(cfg, rank, world)
        resumed.load_state_dict(state)
        got += list(resumed)
        from_one = build_loader(cfg, rank, world)  # elastic 1 -> world
        from_one.load_state_dict(states_from_one_rank[name])
        results[name] = {"epoch0": epoch0, "resumed": got, "state": state,
                         "after_one": list(from_one)}
    return results


def _tp_dp_checks(rank, world, dataset_dir):
    # Workers start as the rank process does (spawn here): the dataset must pickle.
    dp_rank, dp_size = rank // 2, world // 2  # TP=2: ranks 2d and 2d+1 hold DP rank d
    loader = build_loader(_cfg(dataset_dir, "mlm_packed", num_workers=1), dp_rank, dp_size)
    return _epoch_in_lockstep(loader, world)


@pytest.fixture(scope="module")
def two_shard_dataset(tmp_path_factory):
    path = loader_dataset(tmp_path_factory.mktemp("dist") / "two", shard_bytes=8 << 10, chunk_bytes=1500)
    sizes = [s["samples"] for s in read_manifest(path)["splits"]["train"]["shards"]]
    assert len(sizes) == 2 and sizes[0] != sizes[1]
    return path


def _reference_rows(dataset_dir, name):
    loader = build_loader(_cfg(dataset_dir, name, micro_batch_size=1, num_workers=0))
    rows = list(loader)
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def _expect(rows, start, count):
    return {k: v[start:start + count] for k, v in rows.items()}


def _starts(batch):
    """Sample index of each sequence (its first token) in a batch or row stack."""
    return batch["sample_ids"][(batch["position_ids"] == 0) & (batch["segment_ids"] > 0)]


def _same(batch, expected):
    return all(torch.equal(batch[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_two_dp_ranks_cover_resume_and_change_size(two_shard_dataset):
    rows = {name: _reference_rows(two_shard_dataset, name) for name in CONFIGS}
    states_from_one = {}
    for name in CONFIGS:  # a 1-rank run stopped after 3 steps: row 3*MB, not a multiple of 2*MB
        one = build_loader(_cfg(two_shard_dataset, name, num_workers=0))
        batches = iter(one)
        for _ in range(3):
            next(batches)
        states_from_one[name] = one.state_dict()

    results = run_ranks(_dp_group_checks, 2, two_shard_dataset, states_from_one)
    world, global_rows = 2, 2 * MB
    for name, ref in rows.items():
        n_rows = len(ref["input_ids"])
        by_rank = [r[name] for r in results]
        steps = n_rows // global_rows
        for r, res in enumerate(by_rank):
            assert len(res["epoch0"]) == steps
            assert all(_same(b, _expect(ref, s * global_rows + r * MB, MB)) for s, b in enumerate(res["epoch0"]))
            assert len(res["resumed"]) == steps
            assert all(_same(a, b) for a, b in zip(res["resumed"], res["epoch0"]))  # stop at 3, resume
            entered = 3 * MB  # 1 -> 2 ranks continues the global order from the 1-rank run's row
            assert len(res["after_one"]) == (n_rows - entered) // global_rows
            assert all(_same(b, _expect(ref, entered + s * global_rows + r * MB, MB))
                       for s, b in enumerate(res["after_one"]))
        # every sample of the split is seen once per epoch, but for the dropped last rows
        seen = torch.cat([_starts(b) for res in by_rank for b in res["epoch0"]]).tolist()
        assert len(seen) == len(set(seen))
        n_samples = read_manifest(two_shard_dataset)["splits"]["train"]["samples"]
        assert sorted(_starts(ref).tolist()) == list(range(n_samples))
        dropped = _starts(_expect(ref, steps * global_rows, n_rows)).tolist()
        assert sorted(seen + dropped) == list(range(n_samples))
        assert len(ref["input_ids"]) - steps * global_rows < global_rows

        # 2 -> 1 rank: a 1-rank loader given the 2-rank state continues at row 3 * 2 * MB
        one = build_loader(_cfg(two_shard_dataset, name, num_workers=0))
        one.load_state_dict(by_rank[0]["state"])
        rest = list(one)
        assert len(rest) == (n_rows - 3 * global_rows) // MB
        assert all(_same(b, _expect(ref, 3 * global_rows + s * MB, MB)) for s, b in enumerate(rest))


@pytest.mark.slow
def test_tensor_parallel_peers_get_identical_batches(two_shard_dataset):
    results = run_ranks(_tp_dp_checks, 4, two_shard_dataset)
    ref = _reference_rows(two_shard_dataset, "mlm_packed")
    for peer_a, peer_b in [(0, 1), (2, 3)]:
        assert len(results[peer_a]) == len(results[peer_b]) > 0
        assert all(_same(a, b) for a, b in zip(results[peer_a], results[peer_b]))
    for rank in (0, 2):
        dp_rank = rank // 2
        assert all(_same(b, _expect(ref, s * 2 * MB + dp_rank * MB, MB)) for s, b in enumerate(results[rank]))
