"""Loader throughput per rank on the shared antibody corpus, against an in-memory loader.

Prepares ../shared/data/corpus/antibody_heavy_chains.fasta.gz into a temporary dataset
(several shards), then, in one run, measures tokens/s of:

  * the streaming loader (CLM padded, CLM packed, MLM packed) with 0, 1 and 2 workers;
  * a plain in-memory tensor loader over the same batches, already collated (a
    TensorDataset fetched a whole batch per index): the ceiling with no reading at all.

"tokens" are real tokens (not padding) delivered to the model; one process is one rank
(dp_size 1: every rank at any DP size does the same work per batch). Prints a table and
writes benchmarks/results/loader_throughput_cpu.json. Skips when ../shared/data is absent.

    python benchmarks/loader_throughput.py [--seconds 1.5] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from results_io import write_results  # noqa: E402  (beside this script)
SHARED_DATA = REPO.parent / "shared" / "data"
CORPUS = SHARED_DATA / "corpus" / "antibody_heavy_chains.fasta.gz"
TARGET_TOKENS_PER_S = 2_000_000
KEYS = ("input_ids", "labels", "loss_mask", "position_ids", "segment_ids")


def prepare(out: Path) -> Path:
    from data_prep.policy import RecordPolicy
    from data_prep.prep import PrepConfig, SplitPolicy, run_prep
    # VDJ reads are in frame but do not run ATG..stop: keep the frame, skip the ORF check.
    run_prep(PrepConfig(inputs=[str(CORPUS)], output=str(out), shard_bytes=2 << 20, workers=1,
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
            tokens += int((batch["segment_ids"] > 0).sum())
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=444)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "loader_throughput_cpu.json"))
    args = parser.parse_args()
    if not CORPUS.is_file():
        print(f"SKIP: {CORPUS} not found (../shared/data is absent): nothing to measure")
        return 0
    torch.set_num_threads(1)
    from helm_scale.data import LoaderConfig, build_loader

    variants = {"clm padded": dict(objective="clm", pack=False),
                "clm packed": dict(objective="clm", pack=True),
                "mlm packed": dict(objective="mlm", pack=True)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = prepare(Path(tmp) / "antibody")
        for name, kw in variants.items():
            base = LoaderConfig(str(dataset), micro_batch_size=args.micro_batch, seq_len=args.seq_len,
                                num_workers=0, **kw)
            started = time.perf_counter()
            reference = build_loader(base)
            build_s = time.perf_counter() - started
            epoch = list(reference)  # the same batches, kept in memory for the baseline
            for workers in (0, 1, 2):
                cfg = LoaderConfig(**{**base.__dict__, "num_workers": workers})
                loader = build_loader(cfg)
                sources = {"streaming": lambda: loader,
                           "in-memory": in_memory(epoch, args.micro_batch, workers)}
                # Alternate the two, repeat, keep the median: the 2 cores are shared with
                # other work, and a side-by-side ratio should see the same conditions.
                runs = {k: [] for k in sources}
                for _ in range(args.repeats):
                    for kind, source in sources.items():
                        runs[kind].append(timed(source, args.seconds))
                for kind, measured in runs.items():
                    median = sorted(measured, key=lambda m: m["tokens_per_s"])[len(measured) // 2]
                    rows.append({"variant": name, "loader": kind, "workers": workers,
                                 **({"build_s": round(build_s, 3)} if kind == "streaming" else {}),
                                 **median, "repeats_tokens_per_s": [round(m["tokens_per_s"]) for m in measured]})
    for row in rows:
        if row["loader"] == "streaming":
            base = next(r for r in rows if r["loader"] == "in-memory" and r["variant"] == row["variant"]
                        and r["workers"] == row["workers"])
            row["vs_in_memory"] = row["tokens_per_s"] / base["tokens_per_s"]
            row["meets_target"] = row["tokens_per_s"] >= TARGET_TOKENS_PER_S

    print(f"{'variant':<11} {'loader':<10} {'workers':>7} {'Mtok/s':>8} {'fill':>6} {'vs mem':>7} {'>=2M':>5}")
    for r in rows:
        ratio = f"{r['vs_in_memory']:.2f}" if "vs_in_memory" in r else ""
        target = ("yes" if r["meets_target"] else "no") if "meets_target" in r else ""
        print(f"{r['variant']:<11} {r['loader']:<10} {r['workers']:>7} {r['tokens_per_s'] / 1e6:>8.2f} "
              f"{r['fill']:>6.2f} {ratio:>7} {target:>5}")
    versions = {p: metadata.version(p) for p in ("torch", "numpy", "webdataset", "wids", "zstandard")}
    result = {"device": {"kind": "cpu", "cpus": os.cpu_count(), "machine": platform.machine(),
                         "processor": platform.processor(), "python": platform.python_version()},
              "versions": versions,
              "config": {"corpus": CORPUS.name, "micro_batch": args.micro_batch, "seq_len": args.seq_len,
                         "seconds_per_repeat": args.seconds, "repeats": args.repeats,
                         "statistic": "median of repeats", "dp_size": 1,
                         "load_average_after": os.getloadavg(),
                         "target_tokens_per_s_per_rank": TARGET_TOKENS_PER_S},
              "rows": rows}
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
