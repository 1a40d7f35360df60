"""Fixtures shared by several test modules. The prepared corpora are read-only and made
once per session; helpers that are plain functions live in the helper modules
(corpora, eval_utils, dist_utils, torchrun_utils, trainer_runs, ...)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.synth import generate, write_fasta
from tests.corpora import loader_dataset, prepare


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread in every test, as the multi-process tests already run each rank
    (dist_utils, torchrun_utils): the tensors here are small, a second OpenMP thread gains
    nothing, and its spin-waits cost CPU the other thread needs on a shared 2-core machine
    (measured: the quick subset 38.6 -> 25.4 CPU-seconds, 10-50x for some evaluation tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> str:
    """1,500 synth records of ~60 codons (train + 5% val) for the training, checkpoint and
    launcher tests."""
    root = tmp_path_factory.mktemp("train")
    write_fasta(root / "corpus.fa", generate(1500, seed=5, median_codons=60, min_codons=20, defect_rate=0))
    return str(prepare(root / "shards", [root / "corpus.fa"]))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """The loader corpus: ~280 train samples of 10..200 codons over several uneven shards
    of several chunks."""
    return loader_dataset(tmp_path_factory.mktemp("loader") / "small", shard_bytes=6 << 10, chunk_bytes=1500)
