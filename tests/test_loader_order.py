"""The global order and the row plan: pure functions of (seed, epoch) and the counts."""
import numpy as np
import pytest

from helm_scale.data.order import EpochOrder, RowPlan, next_fit_row_starts, specials_length

SIZES = [77, 77, 77, 46, 5, 130]


def test_order_is_a_permutation_and_a_pure_function_of_seed_and_epoch():
    order = EpochOrder(SIZES, seed=3, epoch=1, window=50).all_samples()
    assert sorted(order.tolist()) == list(range(sum(SIZES)))
    assert np.array_equal(order, EpochOrder(SIZES, seed=3, epoch=1, window=50).all_samples())
    assert not np.array_equal(order, EpochOrder(SIZES, seed=3, epoch=2, window=50).all_samples())
    assert not np.array_equal(order, EpochOrder(SIZES, seed=4, epoch=1, window=50).all_samples())
    unshuffled = EpochOrder(SIZES, seed=3, epoch=1, window=50, shuffle=False).all_samples()
    assert np.array_equal(unshuffled, np.arange(sum(SIZES)))


def test_shuffle_is_bounded_by_the_window():
    """Each window holds exactly the samples at its positions in the shard-permuted
    concatenation, so a reader never needs more than one window's shards."""
    window = 40
    order = EpochOrder(SIZES, seed=0, epoch=0, window=window)
    firsts = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    # Reconstruct the shard permutation from the order itself: a shard's samples occupy one
    # contiguous stretch of positions, windows only reorder within their bounds.
    all_samples = order.all_samples()
    shard_of = np.searchsorted(np.cumsum(SIZES), all_samples, side="right")
    seen, perm = set(), []
    for s in shard_of:
        if s not in seen:
            seen.add(s)
            perm.append(int(s))
    concatenated = np.concatenate([firsts[s] + np.arange(SIZES[s]) for s in perm])
    for w in range(order.num_windows):
        got = order.window_samples(w)
        assert set(got.tolist()) == set(concatenated[w * window:(w + 1) * window].tolist())
    assert not np.array_equal(all_samples, concatenated)  # and it did shuffle


def _reference_next_fit(lengths, seq_len):
    starts, fill = [], seq_len + 1
    for i, n in enumerate(lengths):
        if fill + n > seq_len:
            starts.append(i)
            fill = 0
        fill += n
    return starts


def test_next_fit_matches_a_plain_loop_and_never_overflows():
    rng = np.random.default_rng(0)
    lengths = specials_length(rng.integers(1, 200, size=2000), 128)
    starts = next_fit_row_starts(lengths, 128)
    assert starts.tolist() == _reference_next_fit(lengths.tolist(), 128)
    fills = np.add.reduceat(lengths, starts)
    assert fills.max() <= 128 and lengths.max() == 128


@pytest.mark.parametrize("window", [7, 64, 10_000])
def test_packed_rows_cover_the_order_once_in_order(window):
    codons = np.random.default_rng(1).integers(5, 90, size=sum(SIZES))
    order = EpochOrder(SIZES, seed=5, epoch=0, window=window)
    plan = RowPlan(order, seq_len=100, codon_lengths=codons)
    rows = plan.rows(0, plan.num_rows)
    assert np.array_equal(np.concatenate(rows), order.all_samples())
    assert all(specials_length(codons[r], 100).sum() <= 100 for r in rows)
    # Any slice equals the same part of the whole: what lets ranks and resumes cut anywhere.
    for a, b in [(0, 3), (5, 17), (plan.num_rows - 4, plan.num_rows)]:
        assert all(np.array_equal(x, y) for x, y in zip(plan.rows(a, b), rows[a:b]))
    with pytest.raises(IndexError):
        plan.rows(0, plan.num_rows + 1)


def test_unpacked_rows_are_single_samples_in_order():
    order = EpochOrder(SIZES, seed=5, epoch=0, window=33)
    plan = RowPlan(order, seq_len=100)
    assert plan.num_rows == sum(SIZES)
    assert np.array_equal(np.concatenate(plan.rows(10, 200)), order.all_samples()[10:200])


def test_length_buckets_reorder_within_each_window_only():
    lengths = np.random.default_rng(0).integers(5, 300, size=sum(SIZES))
    plain = EpochOrder(SIZES, seed=3, epoch=1, window=50)
    bucketed = EpochOrder(SIZES, seed=3, epoch=1, window=50, bucket=8, lengths=lengths)
    for w in range(plain.num_windows):
        a, b = plain.window_samples(w), bucketed.window_samples(w)
        assert sorted(a.tolist()) == sorted(b.tolist())  # the same samples, reordered
        runs = -(-len(b) // 8)  # sorted runs, shuffled: lengths fall only where a run ends
        descents = int(np.sum(np.diff(lengths[b]) < 0))
        assert descents <= runs - 1 and (descents > 0 or runs < 3)
    assert np.array_equal(bucketed.all_samples(),
                          EpochOrder(SIZES, seed=3, epoch=1, window=50, bucket=8, lengths=lengths).all_samples())
    with pytest.raises(ValueError, match="bucket"):
        EpochOrder(SIZES, seed=3, epoch=1, window=50, bucket=8)
