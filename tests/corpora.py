"""Small prepared corpora for the tests, made by the real synth -> prep pipeline, and a
second reader of what prep wrote. The fixtures that hold them are in conftest.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import webdataset as wds

from data_prep.prep import PrepConfig, SplitPolicy, run_prep
from data_prep.synth import generate, write_fasta
from helm_scale.shard_format import chunk_table, decode_chunk, read_manifest, shard_urls

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The loader tests' corpus, also the one the golden loader fingerprints were made on
# (tests/loader_stream.py). families=0: synth's unstructured corpus, whose shard and chunk
# layouts the loader tests are sized for.
LOADER_CORPUS = dict(n_records=300, median_codons=40, seed=7, min_codons=10, max_codons=200, families=0)


def prepare(out: Path, inputs, shard_bytes: int = 1 << 20, val_fraction: float = 0.05,
            test_fraction: float = 0.0, **prep) -> Path:
    """``helm-scale prep INPUTS -o OUT`` in-process, one worker, quiet."""
    run_prep(PrepConfig(inputs=[str(i) for i in inputs], output=str(out), shard_bytes=shard_bytes, workers=1,
                        progress=False, split=SplitPolicy(val_fraction=val_fraction, test_fraction=test_fraction),
                        **prep))
    return out


def loader_dataset(out: Path, shard_bytes: int, chunk_bytes: int | None = None) -> Path:
    """LOADER_CORPUS prepared into OUT (its FASTA beside it), cut into shards of about
    shard_bytes and chunks of chunk_bytes (prep's default when None)."""
    fasta = out.parent / f"{out.name}.fasta"
    corpus = dict(LOADER_CORPUS)
    write_fasta(fasta, generate(corpus.pop("n_records"), **corpus))
    chunking = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    return prepare(out, [fasta], shard_bytes=shard_bytes, **chunking)


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
