"""Forward + backward time and peak memory: vocab-parallel HXE vs megatron-core's flat
vocab-parallel CE vs F.cross_entropy, on the same logits, side by side in one run.

    python -m benchmarks.hxe_loss [--quick] [--sixmer] [--out PATH]

Codon vocabulary padded to 128 (as megatron pads it), 8k / 32k / 128k tokens, fp32 and
bf16 logits (the loss math is fp32 either way), TP = 1 and 2. Two gloo processes, one
thread each: TP = 2 runs on both; TP = 1 runs on rank 0 alone while rank 1 waits.
``--sixmer`` adds a 4,096-entry codon-pair vocabulary (the blocked layout) at 16k tokens.

Time: the methods take turns within every repeat (HXE, HXE overwriting its logits,
megatron-core, F.cross_entropy), so load from other processes on the machine hits them
alike; a row reports the median fwd+bwd time per method and the median and quartiles of
the per-repeat ratio HXE / megatron-core. Memory, two views: the process's peak resident
set growth during fwd+bwd (Linux clear_refs / VmHWM; glibc is told to mmap every large
block so freed tensors leave RSS at once), measured with the logits already allocated,
the gradient that ends in logits.grad included; and the bytes autograd holds for
backward (saved_tensors_hooks), counting each storage once and not counting the
caller's own logits buffer. Writes benchmarks/results/hxe_loss_cpu.json (or --out).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from benchmarks.results_io import write_results
from helm_scale.codon import CODONS, GENETIC_CODE, CodonTree, Vocabulary
from helm_scale.losses import HierarchicalLoss, LossConfig, build_loss
from tests.dist_utils import run_ranks

RESULTS = Path(__file__).resolve().parent / "results" / "hxe_loss_cpu.json"
# (vocabulary, tokens, logits dtype). A 4,096-entry vocabulary costs 32x the codon
# vocabulary per token: one size of it shows the blocked layout without dominating the run.
GRID = [("codon", n, d) for n in (8_192, 32_768, 131_072) for d in ("float32", "bfloat16")]
SIXMER = [("6mer", 16_384, "float32")]
QUICK_GRID = [("codon", 8_192, "float32"), ("codon", 8_192, "bfloat16")]


def sixmer_tree() -> CodonTree:
    """4,096 codon pairs: root / amino acid of the first codon / first codon / pair."""
    amino = sorted(set(GENETIC_CODE.values()))
    names, parents = ["all_tokens"], [-1]
    for aa in amino:
        names.append(f"aa:{aa}"), parents.append(0)
    for codon in CODONS:
        names.append(f"first:{codon}"), parents.append(1 + amino.index(GENETIC_CODE[codon]))
    first = 1 + len(amino)
    leaf_of = []
    for i, a in enumerate(CODONS):
        for b in CODONS:
            leaf_of.append(len(names))
            names.append(a + b), parents.append(first + i)
    return CodonTree("6mer", tuple(names), tuple(parents), tuple(leaf_of))


def _malloc_mode(measure_memory: bool):
    """Memory reps: every block over 64 KiB is mmap'd, so a free shows in RSS at once.
    Timing reps: blocks up to glibc's 32 MiB cap are reused from the heap, as a caching
    allocator would on a GPU, so small tables do not pay page faults on every call."""
    libc = ctypes.CDLL("libc.so.6")
    threshold = 1 << 16 if measure_memory else 32 << 20
    libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD (fixed, not adaptive)
    libc.mallopt(-1, threshold if measure_memory else 1 << 30)  # M_TRIM_THRESHOLD
    if measure_memory:
        libc.malloc_trim(0)  # give back what the timing reps left cached


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise KeyError(field)


def _peak_mib(step, make_input) -> float:
    z = make_input()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS watermark
    before = _status_kib("VmRSS")
    step(z)
    return (_status_kib("VmHWM") - before) / 1024


def _saved_mib(step, make_input) -> float:
    """MiB that autograd keeps for backward: each saved storage once, the caller's logits
    buffer (which an overwriting loss saves as its softmax) not counted."""
    z = make_input()
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(z)
    storages.pop(z.untyped_storage().data_ptr(), None)
    return sum(storages.values()) / 2**20


def _measure(methods: dict, make_input, reps: int) -> dict:
    """Memory per method, then timings interleaved method by method, so that load from
    other processes on the machine hits every method alike."""
    _malloc_mode(measure_memory=True)
    peaks = {name: max(_peak_mib(step, make_input) for _ in range(2))
             for name, step in methods.items()}
    saved = {name: _saved_mib(step, make_input) for name, step in methods.items()}
    _malloc_mode(measure_memory=False)
    times = {name: [] for name in methods}
    for rep in range(reps + 1):  # the first round is a warm-up
        for name, step in methods.items():
            z = make_input()
            start = time.perf_counter()
            step(z)
            if rep:
                times[name].append(time.perf_counter() - start)
            del z
    return {name: (times[name], peaks[name], saved[name]) for name in methods}


def _quartiles(values) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _megatron_step(target, mask):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    def step(z):
        per_token = vocab_parallel_cross_entropy(z, target)
        ((per_token * mask).sum() / mask.sum()).backward()
    return step


def _hxe_step(loss_fn, target, mask, group):
    return lambda z: loss_fn(z, target, mask, group).loss.backward()


def _xe_step(target, mask):
    return lambda z: ((F.cross_entropy(z, target, reduction="none") * mask).sum()
                      / mask.sum()).backward()


def _losses(vocab_name, padded):
    if vocab_name == "codon":
        vocab = Vocabulary.default()
        return (build_loss(LossConfig("hxe"), vocab, padded),
                build_loss(LossConfig("hxe", overwrite_logits=True), vocab, padded), len(vocab))
    tree = sixmer_tree()
    return (HierarchicalLoss(tree, padded, LossConfig("hxe")),
            HierarchicalLoss(tree, padded, LossConfig("hxe", overwrite_logits=True)), 4096)


def _bench_rank(rank, world, grid, reps_small, reps_big):
    from megatron.core import parallel_state
    rows = []
    for tp in (1, 2):
        parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
        active = tp == 2 or rank == 0
        # One thread per rank: the idle rank's gloo wait can poll a core, and OpenMP
        # threads that lose a core stall; it also keeps TP = 1 and 2 per-rank comparable.
        torch.set_num_threads(1)
        group = parallel_state.get_tensor_model_parallel_group() if tp == 2 else None
        tp_rank = rank if tp == 2 else 0
        losses = {}
        for vocab_name, tokens, dtype_name in grid:
            padded = 128 if vocab_name == "codon" else 4096  # megatron pads to 128 x TP
            if vocab_name not in losses:
                losses[vocab_name] = _losses(vocab_name, padded)
            hxe, hxe_overwrite, vocab_size = losses[vocab_name]
            width = padded // tp
            dist.barrier()
            if not active:
                continue
            dtype = getattr(torch, dtype_name)
            g = torch.Generator().manual_seed(tokens)
            full_target = torch.randint(0, vocab_size, (tokens,), generator=g)
            mask = (torch.rand(tokens, generator=g) > 0.1).float()
            base = (torch.randn(tokens, width, generator=torch.Generator().manual_seed(
                tokens + 7919 * tp_rank)) * 3).to(dtype)
            fresh = lambda: base.clone().requires_grad_(True)  # noqa: E731
            reps = reps_small if tokens * width <= (1 << 22) else reps_big
            methods = {"hxe": _hxe_step(hxe, full_target, mask, group),
                       "hxe_overwrite": _hxe_step(hxe_overwrite, full_target, mask, group),
                       "megatron_ce": _megatron_step(full_target, mask)}
            if tp == 1:
                methods["torch_ce"] = _xe_step(full_target, mask)
            row = {"vocab": vocab_name, "padded_vocab": padded, "tp": tp, "tokens": tokens,
                   "dtype": dtype_name, "groups": hxe.num_groups + 1, "reps": reps}
            measured = _measure(methods, fresh, reps)
            for name, (times, peak, saved) in measured.items():
                row[f"{name}_s"] = statistics.median(times)
                row[f"{name}_peak_mib"], row[f"{name}_saved_mib"] = peak, saved
            reference = measured["megatron_ce"][0]
            for name in ("hxe", "hxe_overwrite"):
                paired = [a / b for a, b in zip(measured[name][0], reference)]
                row[f"{name}_ratio_q1"], row[f"{name}_ratio"], row[f"{name}_ratio_q3"] = \
                    _quartiles(paired)
            row["logits_mib"] = tokens * width * base.element_size() / 2**20
            row["logits_fp32_mib"] = tokens * width * 4 / 2**20
            row["tokens_x_groups_mib"] = tokens * row["groups"] * 4 / 2**20
            rows.append(row)
    return rows


def _print_table(rows):
    head = (f"{'vocab':>5} {'dtype':>8} {'TP':>2} {'tokens':>7} | {'hxe ms':>7} {'hxe-ow':>7} "
            f"{'mcore':>7} {'F.ce':>7} | {'hxe/mc (q1-q3)':>16} {'ow/mc (q1-q3)':>16} | "
            f"{'peak MiB hxe':>12} {'ow':>6} {'mc':>6} | {'saved hxe':>9} {'ow':>6} {'mc':>6} | "
            f"{'logits':>6} {'TxG':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ce = f"{r['torch_ce_s'] * 1e3:7.1f}" if "torch_ce_s" in r else f"{'-':>7}"
        ratio = lambda k: (f"{r[k + '_ratio']:5.2f} ({r[k + '_ratio_q1']:4.2f}-"  # noqa: E731
                           f"{r[k + '_ratio_q3']:4.2f})")
        print(f"{r['vocab']:>5} {r['dtype']:>8} {r['tp']:>2} {r['tokens']:>7} | "
              f"{r['hxe_s'] * 1e3:7.1f} {r['hxe_overwrite_s'] * 1e3:7.1f} "
              f"{r['megatron_ce_s'] * 1e3:7.1f} {ce} | {ratio('hxe'):>16} "
              f"{ratio('hxe_overwrite'):>16} | {r['hxe_peak_mib']:12.1f} "
              f"{r['hxe_overwrite_peak_mib']:6.1f} {r['megatron_ce_peak_mib']:6.1f} | "
              f"{r['hxe_saved_mib']:9.1f} {r['hxe_overwrite_saved_mib']:6.1f} "
              f"{r['megatron_ce_saved_mib']:6.1f} | {r['logits_mib']:6.1f} "
              f"{r['tokens_x_groups_mib']:5.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8k tokens only (a smoke run)")
    parser.add_argument("--sixmer", action="store_true",
                        help="add the 4,096-entry codon-pair vocabulary at 16k tokens")
    parser.add_argument("--reps", type=int, default=9,
                        help="timed repeats per row up to 4M logits (default 9)")
    parser.add_argument("--reps-big", type=int, default=7,
                        help="timed repeats per larger row (default 7)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON path ({RESULTS})")
    args = parser.parse_args(argv)
    grid = QUICK_GRID if args.quick else GRID + (SIXMER if args.sixmer else [])
    started = time.perf_counter()
    rows = run_ranks(_bench_rank, 2, grid, args.reps, args.reps_big)[0]
    device = (f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()});"
              " no GPU is lent to this task, so NCCL and GPU timings are not measured")
    print(f"device: {device}; torch {torch.__version__}; hxe alpha 0.4 normalised; loss math "
          "fp32; times are median fwd+bwd; ratios: median (quartiles) of per-repeat "
          "ratios to megatron-core; peak MiB = peak RSS growth (rank 0); saved = MiB held "
          "for backward beyond the logits buffer")
    _print_table(rows)
    write_results(args.out, {
        "device": device, "torch": torch.__version__, "python": platform.python_version(),
        "config": {"loss": "hxe", "alpha": 0.4, "normalized": True, "grid": grid,
                   "threads_per_rank": 1, "reps": [args.reps, args.reps_big],
                   "memory": "peak RSS growth during fwd+bwd, rank 0, logits preallocated; "
                             "saved: storages autograd holds for backward, logits excluded"},
        "rows": rows, "wall_seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main()
