"""A synthetic corpus end to end at corpus scale: synth -> prep -> verify -> loader
start-up -> a few training steps, with the time, peak memory and bytes of each stage,
and a linear extrapolation to HELM's 15M sequences.

Every stage is the real command (``helm-scale synth|prep|verify|train``) in its own
process, so its peak RSS is its own. The training stage runs ``configs/tiny.yaml`` for
``--steps`` steps in one process: its time is start-up plus those steps, and does not
grow with the corpus (it is not extrapolated). The other stages are linear in the
number of sequences (one pass; prep's dedup is O(n log n) but its sorted merge is a
small part), which is what the extrapolation assumes.

    python -m benchmarks.corpus_scale [--records 1000000] [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_io import write_results

ROOT = Path(__file__).resolve().parents[1]
HELM_SEQUENCES = 15_000_000
CLI = [sys.executable, "-m", "helm_scale.cli"]


def run_stage(name: str, argv: list[str], log: Path) -> dict:
    """Run one stage; wall seconds and the peak RSS of its process tree's largest process."""
    print(f"+ {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {name} failed; its output is in {log}:\n{log.read_text()[-2000:]}")
    return {"stage": name, "seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="synthetic sequences (default 1000000)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="prep workers (default: cores)")
    ap.add_argument("--steps", type=int, default=20, help="training steps of configs/tiny.yaml (default 20)")
    ap.add_argument("--keep", help="work in this directory and keep it (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "corpus_scale_cpu.json"))
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="corpus-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    fasta, shards, run_dir = work / "corpus.fa.gz", work / "shards", work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    stages = []
    try:
        # --families 0: the unstructured corpus of the published numbers, comparable across revisions
        stages.append(run_stage("synth", CLI + ["synth", str(fasta), "--records", str(args.records), "--families", "0"],
                                work / "synth.log"))
        stages[-1]["bytes"] = tree_bytes(fasta)
        stages.append(run_stage("prep", CLI + ["prep", str(fasta), "-o", str(shards), "--workers",
                                               str(args.workers), "--overwrite", "--quiet"], work / "prep.log"))
        stages[-1]["bytes"] = tree_bytes(shards)
        stages.append(run_stage("verify", CLI + ["verify", str(shards), "--quiet"], work / "verify.log"))
        stages.append(run_stage("loader start-up", [sys.executable, "-c",
                                "import json; "
                                "from benchmarks.loader_throughput import startup; "
                                f"print(json.dumps(startup({str(shards)!r})))"], work / "startup.log"))
        stages[-1]["detail"] = json.loads((work / "startup.log").read_text().strip().splitlines()[-1])
        stages.append(run_stage("train", CLI + ["train", "configs/tiny.yaml", f"data.dataset_dir={shards}",
                                                f"run.run_dir={run_dir}", f"schedule.max_steps={args.steps}",
                                                "schedule.warmup_steps=2", "run.log_interval=5",
                                                f"run.eval_interval={args.steps}", "data.num_workers=1"],
                                work / "train.log"))
        stages[-1]["bytes"] = tree_bytes(run_dir)
        manifest = json.loads((shards / "manifest.json").read_text())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    kept, tokens = manifest["totals"]["kept"], sum(s["tokens"] for s in manifest["splits"].values())
    scale = HELM_SEQUENCES / args.records
    print(f"\n{args.records:,} synthetic records -> {kept:,} sequences, {tokens:,} codon tokens; "
          f"prep with {args.workers} workers on {os.cpu_count()} cores")
    print(f"{'stage':<16} {'seconds':>9} {'peak MiB':>9} {'MB out':>9} {'15M: s':>9} {'15M: GB':>9}")
    for s in stages:
        linear = s["stage"] != "train"
        # Process times include interpreter and torch start-up (a few seconds), so x15 of
        # them overstates a little; start-up is scaled from its in-process timing.
        base = max(s["detail"][k]["total_s"] for k in ("padded", "packed")) if "detail" in s else s["seconds"]
        s["extrapolated_15m_seconds"] = round(base * scale) if linear else s["seconds"]
        if "bytes" in s and linear:
            s["extrapolated_15m_bytes"] = round(s["bytes"] * scale)
        mb = f"{s['bytes'] / 1e6:9.1f}" if "bytes" in s else f"{'':>9}"
        gb = f"{s['extrapolated_15m_bytes'] / 1e9:9.2f}" if "extrapolated_15m_bytes" in s else f"{'':>9}"
        print(f"{s['stage']:<16} {s['seconds']:>9.1f} {s['peak_rss_mib']:>9} {mb} "
              f"{s['extrapolated_15m_seconds']:>9,.0f} {gb}")
    detail = next(s["detail"] for s in stages if s["stage"] == "loader start-up")
    print(f"loader start-up, padded / packed: {detail['padded']['total_s']:.2f} / {detail['packed']['total_s']:.2f} s "
          f"to the first batch ({detail['train_chunks']} chunks in {detail['train_shards']} shards)")
    write_results(args.out, {"benchmark": "corpus_scale", "records": args.records, "sequences": kept,
                             "tokens": tokens, "workers": args.workers, "train_steps": args.steps,
                             "device": f"cpu ({os.cpu_count()} cores, {platform.machine()})",
                             "extrapolation": f"x{scale:g} to {HELM_SEQUENCES:,} records, linear; train not scaled",
                             "stages": stages})
    return 0


if __name__ == "__main__":
    sys.exit(main())
