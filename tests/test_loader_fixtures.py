"""Small prepared datasets for the loader tests, made by the real data_prep pipeline.

Also checks the fixture itself: uneven shards are what several loader tests rely on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_prep.prep import PrepConfig, SplitPolicy, run_prep
from data_prep.synth import generate, write_fasta
from helm_scale.shard_format import chunk_table, decode_chunk, read_manifest, shard_urls

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_dataset(out: Path, n_records: int = 300, median_codons: int = 40,
                 shard_bytes: int = 6 << 10, seed: int = 7, chunk_bytes: int = 1500) -> Path:
    fasta = out.parent / f"{out.name}.fasta"
    # families=0: synth's unstructured corpus, whose shard and chunk layouts the loader tests are sized for
    write_fasta(fasta, generate(n_records, seed=seed, median_codons=median_codons,
                                min_codons=10, max_codons=200, families=0))
    run_prep(PrepConfig(inputs=[str(fasta)], output=str(out), shard_bytes=shard_bytes,
                        chunk_bytes=chunk_bytes, workers=1,
                        progress=False, split=SplitPolicy(val_fraction=0.05, test_fraction=0.0)))
    return out


def reference_tokens(dataset_dir: Path, split: str = "train") -> dict[int, np.ndarray]:
    """Every sample's codon ids read by webdataset's streaming reader: a second path to the
    same bytes, independent of the loader's wids-based random access."""
    manifest = read_manifest(dataset_dir)
    counts = [int(n) for s in manifest["splits"][split]["shards"] for n, _ in chunk_table(s)]
    out = {}
    stream = wds.WebDataset(shard_urls(dataset_dir, split), shardshuffle=False, empty_check=False)
    for sample, n in zip(stream, counts, strict=True):
        first = int(sample["__key__"])
        chunk = decode_chunk(sample, manifest["token_dtype"], n, first, sample["__url__"])
        out.update((first + i, chunk.sequence(i)) for i in range(n))
    return out


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """~280 train samples of 10..200 codons over several uneven shards of several chunks."""
    return make_dataset(tmp_path_factory.mktemp("loader") / "small")


def test_fixture_has_several_uneven_shards(small_dataset):
    shards = read_manifest(small_dataset)["splits"]["train"]["shards"]
    sizes = [s["samples"] for s in shards]
    assert len(sizes) >= 3 and len(set(sizes)) > 1
    assert all(len(s["chunks"]) >= 2 for s in shards[:-1])
    assert len(reference_tokens(small_dataset)) == sum(sizes)
