"""Re-read every shard of a prepared dataset and check it against its manifest.

Checks: each shard's sha256, size, sample and token counts; its chunks, in order, against
the manifest's chunk list (keys contiguous across a split's shards, sample and token
counts, each chunk's lengths against its tokens, metadata for every sequence);
every token id is in the vocabulary; no sequence appears twice (when prep removed
duplicates); per-split and per-input totals add up; no stray or half-written files.
Exits non-zero with the list of problems if anything is off.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from helm_scale.codon import Vocabulary
from helm_scale.durable import is_temp, sha256_file
from helm_scale.shard_format import (CHUNK_MEMBER, ShardError, chunk_table, decode_chunk, decode_meta,
                                     read_manifest)

from .dedup import SeenHashes
from .policy import content_hashes

_MEMBERS = {CHUNK_MEMBER}  # as webdataset names them: no dot


def verify(dataset_dir, progress: bool = False) -> list[str]:
    """Returns a list of problems; empty means the dataset matches its manifest."""
    from tqdm import tqdm

    root = Path(dataset_dir)
    manifest = read_manifest(root)
    problems: list[str] = []
    vocab = Vocabulary.from_dict(manifest["vocabulary"])
    if vocab.fingerprint != manifest["vocabulary_fingerprint"]:
        problems.append("vocabulary does not match its recorded fingerprint")
    seen = SeenHashes() if manifest["settings"]["dedup"] else None
    listed = {s["path"] for split in manifest["splits"].values() for s in split["shards"]}
    for f in root.rglob("*"):
        rel = f.relative_to(root).as_posix()
        if is_temp(f.name):
            problems.append(f"{rel}: half-written file left behind")
        elif f.suffix == ".tar" and rel not in listed:
            problems.append(f"{rel}: shard not listed in the manifest")

    all_shards = [(name, s) for name, split in manifest["splits"].items() for s in split["shards"]]
    bar = tqdm(total=sum(s["bytes"] for _, s in all_shards), unit="B", unit_scale=True,
               desc="verify", disable=not progress, file=sys.stderr)
    next_index = {name: 0 for name in manifest["splits"]}
    for split_name, record in all_shards:
        if not record["path"].startswith(f"{split_name}/"):
            problems.append(f"{record['path']}: listed under split {split_name}")
        problems += _check_shard(root, record, manifest["token_dtype"], len(vocab), seen, next_index, split_name)
        bar.update(record["bytes"])
    bar.close()
    problems += _check_totals(manifest)
    return problems


def _check_shard(root: Path, record: dict, dtype: str, vocab_size: int, seen, next_index: dict,
                 split: str) -> list[str]:
    from webdataset.tariterators import group_by_keys, tar_file_expander

    path, problems = root / record["path"], []
    if not path.is_file():
        return [f"{record['path']}: missing"]
    if path.stat().st_size != record["bytes"]:
        problems.append(f"{record['path']}: {path.stat().st_size} bytes, manifest says {record['bytes']}")
    if sha256_file(path) != record["sha256"]:
        problems.append(f"{record['path']}: sha256 differs from the manifest (corrupted or replaced)")
    table = chunk_table(record).tolist()
    n_chunks = n_samples = n_tokens = 0
    try:
        with open(path, "rb") as stream:
            for sample in group_by_keys(tar_file_expander([{"stream": stream, "url": str(path)}])):
                where = f"{record['path']} chunk {n_chunks} (key {sample['__key__']})"
                if n_chunks >= len(table):
                    problems.append(f"{where}: more chunks than the manifest's {len(table)}")
                    break
                expected_samples, expected_tokens = table[n_chunks]
                n_chunks += 1
                first = next_index[split]
                next_index[split] = first + expected_samples
                extra = {k for k in sample if not k.startswith("__")} - _MEMBERS
                if extra:
                    problems.append(f"{where}: unexpected members {sorted(extra)}")
                try:
                    chunk = decode_chunk(sample, dtype, expected_samples, first, where)
                    meta = decode_meta(sample, expected_samples, where)
                except ShardError as e:
                    problems.append(str(e))
                    continue
                n_samples += len(chunk)
                n_tokens += len(chunk.tokens)
                if len(chunk.tokens) != expected_tokens:
                    problems.append(f"{where}: {len(chunk.tokens)} tokens, the manifest says {expected_tokens}")
                if len(chunk.tokens) and int(chunk.tokens.max()) >= vocab_size:
                    problems.append(f"{where}: token id outside the vocabulary")
                if any(not m["id"] and m["id"] != 0 for m in meta):
                    problems.append(f"{where}: a sequence without an id")
                if seen is not None:
                    hashes = content_hashes(chunk.tokens, np.diff(chunk.offsets), b"")
                    for i in np.flatnonzero(~seen.add(hashes)).tolist():
                        problems.append(f"{where}: sequence {first + i} is a duplicate")
    except Exception as e:  # any unreadable shard is a finding, not a crash
        problems.append(f"{record['path']}: unreadable ({type(e).__name__}: {e})")
    if n_chunks != len(table):
        problems.append(f"{record['path']}: {n_chunks} chunks, the manifest lists {len(table)}")
    if (n_samples, n_tokens) != (record["samples"], record["tokens"]):
        problems.append(f"{record['path']}: {n_samples} samples / {n_tokens} tokens, manifest "
                        f"says {record['samples']} / {record['tokens']}")
    return problems


def _check_totals(manifest: dict) -> list[str]:
    problems = []
    for name, split in manifest["splits"].items():
        if split["samples"] != sum(s["samples"] for s in split["shards"]):
            problems.append(f"split {name}: sample total differs from its shards")
    kept = sum(split["samples"] for split in manifest["splits"].values())
    tot = manifest["totals"]
    if kept != tot["kept"]:
        problems.append(f"{kept} samples in shards but {tot['kept']} records kept")
    for item in manifest["inputs"]:
        if item["kept"] + item["duplicates"] + sum(item["rejected"].values()) != item["records"]:
            problems.append(f"{item['path']}: kept + duplicates + rejected != records read")
    return problems


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="a directory written by helm-scale prep")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    try:
        problems = verify(args.dataset, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"helm-scale verify: error: {e}", file=sys.stderr)
        return 2
    manifest = read_manifest(args.dataset)
    n = sum(s["samples"] for s in manifest["splits"].values())
    n_shards = sum(len(s["shards"]) for s in manifest["splits"].values())
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    n_chunks = sum(len(s["chunks"]) for split in manifest["splits"].values() for s in split["shards"])
    print(f"{args.dataset}: OK ({n:,} samples in {n_chunks} chunks of {n_shards} shards match the manifest)")
    return 0
