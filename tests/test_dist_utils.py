import pytest
import torch
import torch.distributed as dist

from tests.dist_utils import run_ranks


def _sum_of_ranks(rank, world_size):
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return t.item()


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise RuntimeError("rank one fails on purpose")
    dist.barrier()


@pytest.mark.slow
def test_ranks_communicate_and_return_values():
    assert run_ranks(_sum_of_ranks, 3) == [3.0, 3.0, 3.0]


@pytest.mark.slow
def test_a_failing_rank_fails_the_test():
    with pytest.raises(Exception, match="rank one fails on purpose"):
        run_ranks(_fail_on_rank_one, 2)
