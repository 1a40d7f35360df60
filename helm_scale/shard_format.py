"""The shard format shared by the writer (data_prep) and the readers (loader, verify).

A prepared dataset directory holds::

    manifest.json              what was made, from what, how (written by data_prep.prep)
    rejects.jsonl              a bounded sample of rejected records per reason
    {split}/shard-000000.tar   webdataset shards, one sample per kept sequence

Each sample has two members, each compressed on its own with zstd so that the tar stays
indexable by webdataset's companion ``wids`` (a whole-tar compression would not be):

    {key}.tokens.zst   codon token ids (no <cls>/<eos>; the loader adds them), a raw
                       little-endian array of the manifest's ``token_dtype``
    {key}.json.zst     {"id", "source", "line", "split", "group", "length"} of the record

Keys are the zero-padded index of the sample within its split, so a sample's position
in the split's order is readable from its key alone. The manifest's ``splits[name]
["shards"]`` lists each shard's path, samples, tokens, bytes, sha256 and first key, and
``vocabulary`` / ``tree`` record the exact token order and codon tree.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zstandard

FORMAT = "helm-scale-shards/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
TOKENS_MEMBER, META_MEMBER = "tokens.zst", "json.zst"


def sample_key(index: int) -> str:
    return f"{index:010d}"


def shard_name(split: str, number: int) -> str:
    return f"{split}/shard-{number:06d}.tar"


def encode_sample(index: int, tokens: bytes, meta: dict, compressor) -> dict:
    return {"__key__": sample_key(index),
            TOKENS_MEMBER: compressor.compress(tokens),
            META_MEMBER: compressor.compress(json.dumps(meta, sort_keys=True).encode())}


def decode_sample(sample: dict, token_dtype: str, decompressor=None) -> tuple[np.ndarray, dict]:
    """Token ids and metadata of one webdataset sample (a dict of member bytes)."""
    d = decompressor or zstandard.ZstdDecompressor()
    tokens = np.frombuffer(d.decompress(sample[TOKENS_MEMBER]), dtype=np.dtype(token_dtype))
    return tokens, json.loads(d.decompress(sample[META_MEMBER]))


def read_manifest(dataset_dir) -> dict:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{dataset_dir} has no {MANIFEST}: not a prepared dataset "
                                "(or its preparation did not finish)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def shard_urls(dataset_dir, split: str) -> list[str]:
    """Absolute shard paths of one split, in order, as the manifest lists them."""
    manifest = read_manifest(dataset_dir)
    return [str(Path(dataset_dir) / s["path"]) for s in manifest["splits"][split]["shards"]]
