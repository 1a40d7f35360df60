"""Bytes on disk per codon token of `helm-scale prep` shards, against two references.

For each corpus in ../shared/data/corpus (*.fasta.gz) and a synthetic one, in one run:

  shards      the whole prepared dataset: every shard of every split (tar headers,
              padding, and each chunk's meta and tokens frames)
  zstd-3      the same tokens concatenated (all splits, index order) in one zstd-3 frame:
              the floor a format without per-record structure would reach
  input       the .fa.gz the corpus came from

and the shards' bytes split by kind (tokens; meta: lengths, ids, lines; tar overhead),
at prep's default zstd level (``--zstd-level``; zstd-3 stays the reference).
Goals: shards <= 1.15x zstd-3, and smaller than the input. Prints a table and writes
benchmarks/results/shard_size_cpu.json.

    python -m benchmarks.shard_size [--synth-records 20000] [--chunk-size 1048576]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tarfile
import tempfile
from pathlib import Path

import zstandard

from benchmarks.results_io import write_results

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "corpus"
# In-frame CDS keep the ORF policy; antibody reads are V(D)J, in frame but not ATG..stop.
FRAME = {"natural_cds.fasta.gz": "orf"}


def measure(fasta: Path, out: Path, frame: str, chunk_bytes: int) -> dict:
    from data_prep.policy import RecordPolicy
    from data_prep.prep import PrepConfig, run_prep
    from helm_scale.data.reader import SplitReader
    manifest = run_prep(PrepConfig(inputs=[str(fasta)], output=str(out), workers=1, progress=False,
                                   policy=RecordPolicy(frame=frame), chunk_bytes=chunk_bytes))
    parts = {"tokens": 0, "meta": 0, "tar": 0}
    concatenated = []
    for name, split in manifest["splits"].items():
        for shard in split["shards"]:
            path = out / shard["path"]
            member_bytes = 0
            with tarfile.open(path) as tar:
                for info in tar.getmembers():  # a chunk member: meta frame, then tokens frame
                    frames = zstandard.ZstdDecompressor().decompressobj()
                    frames.decompress(tar.extractfile(info).read())
                    parts["tokens"] += len(frames.unused_data)
                    parts["meta"] += info.size - len(frames.unused_data)
                    member_bytes += info.size
            parts["tar"] += path.stat().st_size - member_bytes
        if split["samples"]:
            reader = SplitReader(out, name, manifest=manifest)
            concatenated += [reader.chunk(c).tokens.tobytes() for c in range(reader.num_chunks)]
            reader.close()
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    shard_bytes = sum(s["bytes"] for split in manifest["splits"].values() for s in split["shards"])
    zstd3 = len(zstandard.ZstdCompressor(level=3).compress(b"".join(concatenated)))
    return {"corpus": fasta.name, "frame": frame, "records": manifest["totals"]["records"],
            "samples": manifest["totals"]["kept"], "tokens": tokens,
            "chunks": sum(len(s["chunks"]) for split in manifest["splits"].values() for s in split["shards"]),
            "shard_bytes": shard_bytes, "zstd3_bytes": zstd3, "input_bytes": fasta.stat().st_size,
            "bytes_per_token": shard_bytes / tokens, "zstd3_bytes_per_token": zstd3 / tokens,
            "input_bytes_per_token": fasta.stat().st_size / tokens,
            "vs_zstd3": shard_bytes / zstd3, "vs_input": shard_bytes / fasta.stat().st_size,
            "parts_bytes_per_token": {k: v / tokens for k, v in parts.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synth-records", type=int, default=20_000)
    ap.add_argument("--chunk-size", type=int, default=1 << 20, help="prep's --chunk-size (bytes of tokens)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shard_size_cpu.json"))
    args = ap.parse_args()
    from data_prep.synth import generate, write_fasta
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / f"synth_{args.synth_records}.fasta.gz"
        # families=0: the unstructured corpus of the published numbers (families compress better)
        write_fasta(synth, generate(args.synth_records, seed=0, families=0))
        corpora = sorted(CORPUS.glob("*.fasta.gz")) if CORPUS.is_dir() else []
        if not corpora:
            print(f"note: no shared corpus at {CORPUS}; measuring the synthetic corpus only")
        for fasta in [*corpora, synth]:
            rows.append(measure(fasta, Path(tmp) / fasta.name.split(".")[0], FRAME.get(fasta.name, "trim")
                                if fasta != synth else "orf", args.chunk_size))
    print(f"chunk size {args.chunk_size:,} bytes of tokens; bytes per codon token on disk")
    print(f"{'corpus':<32} {'tokens':>11} {'shards':>7} {'zstd-3':>7} {'.fa.gz':>7} {'vs zstd-3':>10} "
          f"{'vs .fa.gz':>10} {'tokens/meta/tar':>20}")
    for r in rows:
        p = r["parts_bytes_per_token"]
        print(f"{r['corpus']:<32} {r['tokens']:>11,} {r['bytes_per_token']:>7.3f} {r['zstd3_bytes_per_token']:>7.3f} "
              f"{r['input_bytes_per_token']:>7.3f} {r['vs_zstd3']:>9.2f}x {r['vs_input']:>9.2f}x "
              f"{p['tokens']:.4f}/{p['meta']:.4f}/{p['tar']:.4f}")
    write_results(args.out, {"benchmark": "shard_size", "chunk_bytes": args.chunk_size,
                             "device": f"cpu ({os.cpu_count()} cores, {platform.machine()})",
                             "goals": {"vs_zstd3": "<= 1.15", "vs_input": "< 1"}, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
