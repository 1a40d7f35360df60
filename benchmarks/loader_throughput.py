"""Loader throughput per rank on the shared antibody corpus, against an in-memory loader,
and loader start-up on a large synthetic corpus.

Throughput: prepares ../shared/data/corpus/antibody_heavy_chains.fasta.gz into a
temporary dataset (several shards of 64 KiB chunks), then, in one run, measures tokens/s of:

  * the streaming loader (CLM padded, CLM packed, MLM packed) with 0, 1 and 2 workers;
  * a plain in-memory tensor loader over the same batches, already collated (a
    TensorDataset fetched a whole batch per index): the ceiling with no reading at all.

"tokens" are real tokens (not padding) delivered to the model; one process is one rank
(dp_size 1: every rank at any DP size does the same work per batch). Skipped when
../shared/data is absent.

Start-up: seconds from nothing to a built loader (padded; packed, which reads every
sequence length first) and to its first batch, on ``--startup-dataset`` (any prepared
dataset, e.g. the 1M-sequence one of benchmarks/corpus_scale.py) or on a synthetic corpus
of ``--startup-records`` sequences prepared here (0: skip).

``--baseline REV`` measures the code at git revision REV (e.g. 82bd328, the last with shard
format 1) in the same run: exported with ``git archive``, run as this script in a
subprocess on a dataset its own prep wrote, start-up on the same synthetic FASTA, and
throughput passes alternating with ours (the 2 cores are shared: load drifts).

Prints tables and writes benchmarks/results/loader_throughput_cpu.json.

    python -m benchmarks.loader_throughput [--seconds 1.5] [--repeats 3] [--startup-dataset DIR]
                                           [--baseline 82bd328]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from benchmarks.results_io import write_results

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CORPUS = SHARED_DATA / "corpus" / "antibody_heavy_chains.fasta.gz"
TARGET_TOKENS_PER_S = 4_000_000
KEYS = ("input_ids", "labels", "loss_mask", "position_ids", "segment_ids")


def prepare(out: Path) -> Path:
    from data_prep.policy import RecordPolicy
    from data_prep.prep import PrepConfig, SplitPolicy, run_prep
    # VDJ reads are in frame but do not run ATG..stop: keep the frame, skip the ORF check.
    # 64 KiB chunks and 256 KiB shards: the corpus (1.2M tokens, ~160 KB of shards) then
    # has several shards and a shuffle window spans several chunks, as a real corpus does.
    # (A --baseline of shard format 1 has no chunks; its 2 MB shards were its own setting.)
    layout = (dict(shard_bytes=256 << 10, chunk_bytes=64 << 10) if "chunk_bytes" in PrepConfig.__dataclass_fields__
              else dict(shard_bytes=2 << 20))
    run_prep(PrepConfig(inputs=[str(CORPUS)], output=str(out), workers=1, **layout,
                        progress=False, policy=RecordPolicy(frame="trim"),
                        split=SplitPolicy(val_fraction=0.01, test_fraction=0.01)))
    return out


def timed(batches, seconds: float) -> dict:
    """Consume batches for about ``seconds`` after the first (worker start-up excluded)."""
    it = iter(batches())
    next(it)
    n_batches = tokens = slots = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in it:
            n_batches += 1
            # counted with NumPy: a torch op here would wait on torch's thread pool, a cost
            # of this harness (the trainer's own ops pay it once per step), not of the loader
            tokens += int(np.count_nonzero(batch["segment_ids"].numpy()))
            slots += batch["input_ids"].numel()
            if time.perf_counter() - start >= seconds:
                break
        else:
            it = iter(batches())
    elapsed = time.perf_counter() - start
    return {"batches": n_batches, "seconds": round(elapsed, 3), "tokens_per_s": tokens / elapsed,
            "slots_per_s": slots / elapsed, "fill": tokens / max(slots, 1)}


def in_memory(batches: list[dict], micro_batch: int, workers: int):
    """Plain DataLoader over pre-collated tensors: each index fetches a whole batch."""
    stacked = TensorDataset(*(torch.cat([b[k] for b in batches]) for k in KEYS))
    sampler = BatchSampler(RandomSampler(stacked), micro_batch, drop_last=True)
    loader = DataLoader(stacked, sampler=sampler, batch_size=None, num_workers=workers,
                        persistent_workers=workers > 0)
    return lambda: ({k: t for k, t in zip(KEYS, batch)} for batch in loader)


def startup(dataset_dir: str, micro_batch: int = 128, seq_len: int = 444) -> dict:
    """Seconds to build the loader and to its first batch, padded and packed (workers 0:
    what the first step waits for in the main process)."""
    from helm_scale.data import LoaderConfig, build_loader
    from helm_scale.shard_format import read_manifest
    manifest = read_manifest(dataset_dir)
    train = manifest["splits"]["train"]
    out = {"dataset": str(dataset_dir), "train_samples": train["samples"],
           "train_shards": len(train["shards"]),
           "train_chunks": sum(len(s.get("chunks", ())) for s in train["shards"])}  # format 1: none
    for layout, pack in (("padded", False), ("packed", True)):
        started = time.perf_counter()
        loader = build_loader(LoaderConfig(str(dataset_dir), pack=pack, micro_batch_size=micro_batch,
                                           seq_len=seq_len, num_workers=0))
        built = time.perf_counter()
        next(iter(loader))
        out[layout] = {"build_s": round(built - started, 3), "first_batch_s": round(time.perf_counter() - built, 3),
                       "total_s": round(time.perf_counter() - started, 3)}
    return out


def _startup_dataset(fasta: Path, records: int, out: Path) -> Path:
    """Prepare ``fasta`` (synthesized first, unless a baseline run was handed ours)."""
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.synth import generate, write_fasta
    if not fasta.exists():  # families=0: what older revisions' synth writes, for --baseline
        write_fasta(fasta, generate(records, seed=1, median_codons=100, families=0))
    run_prep(PrepConfig(inputs=[str(fasta)], output=str(out), workers=os.cpu_count() or 1, progress=False))
    return out


VARIANTS = {"clm padded": dict(objective="clm", pack=False),
            "clm packed": dict(objective="clm", pack=True),
            "mlm packed": dict(objective="mlm", pack=True)}


def throughput_pass(dataset: Path, args) -> list[dict]:
    """One measurement of every variant and worker count, streaming then in-memory."""
    from helm_scale.data import LoaderConfig, build_loader
    rows = []
    for name, kw in VARIANTS.items():
        # The loader's own config, not LoaderConfig.from_data: --baseline runs this script
        # over older revisions, which have only this (other fields: DataConfig's defaults).
        base = LoaderConfig(str(dataset), micro_batch_size=args.micro_batch, seq_len=args.seq_len,
                            num_workers=0, **kw)
        started = time.perf_counter()
        reference = build_loader(base)
        build_s = time.perf_counter() - started
        epoch = list(reference)  # the same batches, kept in memory for the ceiling
        for workers in (0, 1, 2):
            loader = build_loader(dataclasses.replace(base, num_workers=workers))
            for kind, source in (("streaming", lambda: loader),
                                 ("in-memory", in_memory(epoch, args.micro_batch, workers))):
                rows.append({"variant": name, "loader": kind, "workers": workers,
                             **({"build_s": round(build_s, 3)} if kind == "streaming" else {}),
                             **timed(source, args.seconds)})
    return rows


def _medians(passes: list[list[dict]]) -> list[dict]:
    """Per (variant, loader, workers): the pass with the median tokens/s, and all of them."""
    out = []
    for k, first in enumerate(passes[0]):
        measured = sorted((p[k] for p in passes), key=lambda m: m["tokens_per_s"])
        out.append({**measured[len(measured) // 2],
                    "repeats_tokens_per_s": [round(p[k]["tokens_per_s"]) for p in passes]})
    return out


class _Baseline:
    """The code at a git revision, exported to a temporary tree and run as this script
    in a subprocess (its helm_scale and data_prep shadow ours), one pass at a time."""

    def __init__(self, rev: str, args):
        import subprocess
        self.rev, self.args, self.tmp = rev, args, tempfile.TemporaryDirectory()
        self.tree = Path(self.tmp.name) / "tree"
        self.tree.mkdir()
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(self.tree)], input=archive.stdout, check=True)

    def run(self, *extra: str) -> dict:
        import json
        import subprocess
        out = Path(self.tmp.name) / "out.json"
        a = self.args
        argv = [sys.executable, "-m", "benchmarks.loader_throughput", "--code-root", str(self.tree), "--out", str(out),
                "--seconds", str(a.seconds), "--micro-batch", str(a.micro_batch), "--seq-len", str(a.seq_len), *extra]
        print(f"+ baseline {self.rev}: {' '.join(extra)}", flush=True)
        out.unlink(missing_ok=True)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        return json.loads(out.read_text()) if out.exists() else {}  # --prepare-to writes none


def _print_startup(label: str, r: dict) -> None:
    print(f"start-up ({label}) on {r['train_samples']:,} train sequences ({r['train_shards']} shards, "
          f"{r['train_chunks']} chunks), seconds:")
    print(f"{'layout':<8} {'build':>7} {'1st batch':>10} {'total':>7}")
    for layout in ("padded", "packed"):
        x = r[layout]
        print(f"{layout:<8} {x['build_s']:>7.2f} {x['first_batch_s']:>10.2f} {x['total_s']:>7.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=444)
    parser.add_argument("--startup-dataset", help="a prepared dataset to time loader start-up on")
    parser.add_argument("--startup-records", type=int, default=1_000_000,
                        help="without --startup-dataset: synthesize and prepare this many sequences "
                             "(median 100 codons) to time start-up on; 0 skips it (default 1000000)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure the code at git revision REV (e.g. 82bd328, shard format 1), "
                             "alternating with ours pass by pass, and report our speed-up over it")
    parser.add_argument("--code-root", help=argparse.SUPPRESS)
    parser.add_argument("--startup-fasta", help=argparse.SUPPRESS)  # a baseline reuses ours
    parser.add_argument("--prepare-to", help=argparse.SUPPRESS)     # a baseline prepares its dataset
    parser.add_argument("--one-pass-on", help=argparse.SUPPRESS)    # ... and measures one pass
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "loader_throughput_cpu.json"))
    args = parser.parse_args()
    if args.code_root:
        sys.path.insert(0, args.code_root)
    torch.set_num_threads(1)
    if args.prepare_to:
        prepare(Path(args.prepare_to))
        return 0
    if args.one_pass_on:
        write_results(args.out, {"rows": throughput_pass(Path(args.one_pass_on), args)})
        return 0
    if args.startup_fasta:  # a baseline timing start-up only
        with tempfile.TemporaryDirectory() as tmp:
            ds = _startup_dataset(Path(args.startup_fasta), args.startup_records, Path(tmp) / "synth")
            write_results(args.out, {"startup": startup(str(ds), args.micro_batch, args.seq_len)})
        return 0

    baseline = _Baseline(args.baseline, args) if args.baseline else None
    work = tempfile.TemporaryDirectory()
    result: dict = {"startup": None, "baseline": {"revision": args.baseline} if baseline else None}
    if args.startup_dataset or args.startup_records:
        fasta = Path(work.name) / "synth.fa"
        with tempfile.TemporaryDirectory() as tmp:
            ds = args.startup_dataset or _startup_dataset(fasta, args.startup_records, Path(tmp) / "synth")
            result["startup"] = startup(str(ds), args.micro_batch, args.seq_len)
        _print_startup("ours", result["startup"])
        if baseline and not args.startup_dataset:
            theirs = baseline.run("--startup-fasta", str(fasta), "--startup-records", str(args.startup_records))
            result["baseline"]["startup"] = theirs["startup"]
            _print_startup(args.baseline, theirs["startup"])
            for layout in ("padded", "packed"):
                a, b = theirs["startup"][layout]["total_s"], result["startup"][layout]["total_s"]
                print(f"start-up {layout}: {a:.2f} s ({args.baseline}) -> {b:.2f} s ({a / b:.0f}x faster)")
    if not CORPUS.is_file():
        print(f"SKIP throughput: {CORPUS} not found (../shared/data is absent)")
        write_results(args.out, result)
        return 0

    ours_ds, theirs_ds = Path(work.name) / "antibody", Path(work.name) / "antibody-baseline"
    prepare(ours_ds)
    if baseline:
        baseline.run("--prepare-to", str(theirs_ds))
    ours, theirs = [], []
    for _ in range(args.repeats):  # alternate passes: the 2 cores are shared, load drifts
        ours.append(throughput_pass(ours_ds, args))
        if baseline:
            theirs.append(baseline.run("--one-pass-on", str(theirs_ds))["rows"])
    rows = _medians(ours)
    mem = {(r["variant"], r["workers"]): r for r in rows if r["loader"] == "in-memory"}
    for r in rows:
        if r["loader"] == "streaming":
            r["vs_in_memory"] = r["tokens_per_s"] / mem[(r["variant"], r["workers"])]["tokens_per_s"]
            r["meets_target"] = r["tokens_per_s"] >= TARGET_TOKENS_PER_S
    if baseline:
        result["baseline"]["rows"] = _medians(theirs)
        old = {(r["variant"], r["loader"], r["workers"]): r for r in result["baseline"]["rows"]}
        for r in rows:
            r[f"{args.baseline}_tokens_per_s"] = old[(r["variant"], r["loader"], r["workers"])]["tokens_per_s"]
            r[f"vs_{args.baseline}"] = r["tokens_per_s"] / r[f"{args.baseline}_tokens_per_s"]
    rev = args.baseline or ""
    print(f"{'variant':<11} {'loader':<10} {'workers':>7} {'Mtok/s':>8} {'fill':>6} {'vs mem':>7} {'>=4M':>5}"
          + (f" {rev + ' Mtok/s':>16} {'vs ' + rev:>11}" if baseline else ""))
    for r in rows:
        ratio = f"{r['vs_in_memory']:.2f}" if "vs_in_memory" in r else ""
        target = ("yes" if r["meets_target"] else "no") if "meets_target" in r else ""
        line = (f"{r['variant']:<11} {r['loader']:<10} {r['workers']:>7} {r['tokens_per_s'] / 1e6:>8.2f} "
                f"{r['fill']:>6.2f} {ratio:>7} {target:>5}")
        if baseline:
            line += f" {r[f'{rev}_tokens_per_s'] / 1e6:>16.2f} {r[f'vs_{rev}']:>10.2f}x"
        print(line)
    versions = {p: metadata.version(p) for p in ("torch", "numpy", "webdataset", "wids", "zstandard")}
    result.update({"device": {"kind": "cpu", "cpus": os.cpu_count(), "machine": platform.machine(),
                              "processor": platform.processor(), "python": platform.python_version()},
                   "versions": versions,
                   "config": {"corpus": CORPUS.name, "micro_batch": args.micro_batch, "seq_len": args.seq_len,
                              "seconds_per_repeat": args.seconds, "repeats": args.repeats,
                              "statistic": "median of repeats; with --baseline, passes alternate", "dp_size": 1,
                              "load_average_after": os.getloadavg(),
                              "target_tokens_per_s_per_rank": TARGET_TOKENS_PER_S},
                   "rows": rows})
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
