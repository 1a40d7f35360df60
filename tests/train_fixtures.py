"""Small prepared corpora for training, checkpoint and evaluation tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.policy import RecordPolicy
from data_prep.prep import PrepConfig, SplitPolicy, run_prep
from data_prep.synth import generate, write_fasta


def make_dataset(root: Path, fasta_records, policy=RecordPolicy()) -> str:
    out = root / "shards"
    run_prep(PrepConfig(inputs=[str(f) for f in fasta_records], output=str(out), workers=1, progress=False,
                        policy=policy, split=SplitPolicy(val_fraction=0.05, test_fraction=0.0),
                        shard_bytes=1 << 20))
    return str(out)


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("train")
    write_fasta(root / "corpus.fa", generate(1500, seed=5, median_codons=60, min_codons=20, defect_rate=0))
    return make_dataset(root, [root / "corpus.fa"])
