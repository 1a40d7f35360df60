"""Re-read every shard of a prepared dataset and check it against its manifest.

Checks: each shard's sha256, size, sample and token counts; sample keys contiguous
across a split's shards; every member decodes and every token id is in the vocabulary;
each sample's metadata names its split; no sequence appears twice (when prep removed
duplicates); per-split and per-input totals add up; no stray or half-written files.
Exits non-zero with the list of problems if anything is off.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from helm_scale.codon import Vocabulary

from helm_scale.shard_format import decode_sample, read_manifest

from . import shards
from .dedup import SeenHashes
from .policy import content_hash


def verify(dataset_dir, progress: bool = False) -> list[str]:
    """Returns a list of problems; empty means the dataset matches its manifest."""
    from tqdm import tqdm
    from webdataset.tariterators import tar_file_expander, group_by_keys

    root = Path(dataset_dir)
    manifest = read_manifest(root)
    problems: list[str] = []
    vocab = Vocabulary.from_dict(manifest["vocabulary"])
    if vocab.fingerprint != manifest["vocabulary_fingerprint"]:
        problems.append("vocabulary does not match its recorded fingerprint")
    dtype = manifest["token_dtype"]
    seen = SeenHashes() if manifest["settings"]["dedup"] else None
    listed = {s["path"] for split in manifest["splits"].values() for s in split["shards"]}
    for f in root.rglob("*"):
        rel = f.relative_to(root).as_posix()
        if f.name.endswith(shards.PARTIAL_SUFFIX):
            problems.append(f"{rel}: half-written file left behind")
        elif f.suffix == ".tar" and rel not in listed:
            problems.append(f"{rel}: shard not listed in the manifest")

    all_shards = [(name, s) for name, split in manifest["splits"].items() for s in split["shards"]]
    bar = tqdm(total=sum(s["bytes"] for _, s in all_shards), unit="B", unit_scale=True,
               desc="verify", disable=not progress, file=sys.stderr)
    next_index = {name: 0 for name in manifest["splits"]}
    for split_name, record in all_shards:
        path = root / record["path"]
        if not path.is_file():
            problems.append(f"{record['path']}: missing")
            continue
        if path.stat().st_size != record["bytes"]:
            problems.append(f"{record['path']}: {path.stat().st_size} bytes, manifest says {record['bytes']}")
        if shards.file_sha256(path) != record["sha256"]:
            problems.append(f"{record['path']}: sha256 differs from the manifest (corrupted or replaced)")
        n_samples = n_tokens = 0
        try:
            with open(path, "rb") as stream:
                samples = group_by_keys(tar_file_expander([{"stream": stream, "url": str(path)}]))
                for sample in samples:
                    key = int(sample["__key__"])
                    if key != next_index[split_name]:
                        problems.append(f"{record['path']}: key {key}, expected {next_index[split_name]}")
                    next_index[split_name] = key + 1
                    tokens, meta = decode_sample(sample, dtype)
                    n_samples += 1
                    n_tokens += len(tokens)
                    if len(tokens) != meta["length"] or meta["split"] != split_name:
                        problems.append(f"{record['path']}:{key}: metadata disagrees with its sample")
                    if len(tokens) and int(tokens.max()) >= len(vocab):
                        problems.append(f"{record['path']}:{key}: token id outside the vocabulary")
                    if seen is not None and not seen.add([content_hash(tokens.tobytes())])[0]:
                        problems.append(f"{record['path']}:{key}: duplicate sequence")
        except Exception as e:  # any unreadable shard is a finding, not a crash
            problems.append(f"{record['path']}: unreadable ({type(e).__name__}: {e})")
        if (n_samples, n_tokens) != (record["samples"], record["tokens"]):
            problems.append(f"{record['path']}: {n_samples} samples / {n_tokens} tokens, manifest "
                            f"says {record['samples']} / {record['tokens']}")
        bar.update(record["bytes"])
    bar.close()
    problems += _check_totals(manifest)
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
    print(f"{args.dataset}: OK ({n:,} samples in {n_shards} shards match the manifest)")
    return 0
