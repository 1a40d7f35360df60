"""Forward + backward time and peak memory: vocab-parallel HXE vs megatron-core's flat
vocab-parallel CE vs F.cross_entropy, on the same logits, side by side in one run.

    python benchmarks/hxe_loss.py [--quick]

Two gloo processes, one thread each: TP = 2 runs on both; TP = 1 runs on rank 0 alone
while rank 1 waits. Memory is the process's peak resident set growth during
fwd+bwd (Linux clear_refs / VmHWM; glibc is told to mmap every large block so freed
tensors leave RSS at once), measured with the logits already allocated; the gradient
that ends in logits.grad counts. Writes benchmarks/results/hxe_loss_cpu.json.
"""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helm_scale.codon import CODONS, GENETIC_CODE, CodonTree, Vocabulary  # noqa: E402
from helm_scale.losses import HierarchicalLoss, LossConfig, build_loss  # noqa: E402
from tests.dist_utils import run_ranks  # noqa: E402
from results_io import write_results  # noqa: E402  (beside this script)

RESULTS = Path(__file__).resolve().parent / "results" / "hxe_loss_cpu.json"
# 256k tokens x 4,096 entries is 4 GiB per fp32 copy and several seconds per pass on two
# cores: the 6-mer vocabulary stops at 64k tokens here.
GRID = {"codon": (16_384, 65_536, 262_144), "6mer": (16_384, 65_536)}
QUICK_GRID = {"codon": (16_384,), "6mer": (16_384,)}


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


def _measure(methods: dict, make_input, reps: int) -> dict:
    """Peak memory per method, then timings interleaved method by method, so that load
    from other processes on the machine hits every method alike."""
    _malloc_mode(measure_memory=True)
    peaks = {name: max(_peak_mib(step, make_input) for _ in range(2))
             for name, step in methods.items()}
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
    return {name: (statistics.median(times[name]), peaks[name]) for name in methods}


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
        for vocab_name, token_counts in grid.items():
            padded = 128 if vocab_name == "codon" else 4096  # megatron pads to 128 x TP
            hxe, hxe_overwrite, vocab_size = _losses(vocab_name, padded)
            width = padded // tp
            for tokens in token_counts:
                dist.barrier()
                if not active:
                    continue
                g = torch.Generator().manual_seed(tokens)
                full_target = torch.randint(0, vocab_size, (tokens,), generator=g)
                mask = (torch.rand(tokens, generator=g) > 0.1).float()
                base = torch.randn(tokens, width, generator=torch.Generator().manual_seed(
                    tokens + 7919 * tp_rank)) * 3
                fresh = lambda: base.clone().requires_grad_(True)  # noqa: E731
                reps = reps_small if tokens * width <= (1 << 24) else reps_big
                methods = {"hxe": _hxe_step(hxe, full_target, mask, group),
                           "hxe_overwrite": _hxe_step(hxe_overwrite, full_target, mask, group),
                           "megatron_ce": _megatron_step(full_target, mask)}
                if tp == 1:
                    methods["torch_ce"] = _xe_step(full_target, mask)
                row = {"vocab": vocab_name, "padded_vocab": padded, "tp": tp,
                       "tokens": tokens, "groups": hxe.num_groups + 1}
                for name, (seconds, peak) in _measure(methods, fresh, reps).items():
                    row[f"{name}_s"], row[f"{name}_peak_mib"] = seconds, peak
                row["logits_mib"] = tokens * width * 4 / 2**20
                row["tokens_x_groups_mib"] = tokens * row["groups"] * 4 / 2**20
                rows.append(row)
    return rows


def _print_table(rows):
    head = (f"{'vocab':>6} {'TP':>2} {'tokens':>7} | {'hxe ms':>8} {'hxe-ow':>8} {'mcore':>8} "
            f"{'F.ce':>8} | {'t hxe/mc':>8} {'t ow/mc':>7} | {'MiB hxe':>8} {'hxe-ow':>8} "
            f"{'mcore':>8} {'F.ce':>8} {'logits':>7} {'TxG':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ce = f"{r['torch_ce_s'] * 1e3:8.1f}" if "torch_ce_s" in r else f"{'-':>8}"
        ce_mem = f"{r['torch_ce_peak_mib']:8.1f}" if "torch_ce_s" in r else f"{'-':>8}"
        print(f"{r['vocab']:>6} {r['tp']:>2} {r['tokens']:>7} | {r['hxe_s'] * 1e3:8.1f} "
              f"{r['hxe_overwrite_s'] * 1e3:8.1f} {r['megatron_ce_s'] * 1e3:8.1f} {ce} | "
              f"{r['hxe_s'] / r['megatron_ce_s']:8.2f} "
              f"{r['hxe_overwrite_s'] / r['megatron_ce_s']:7.2f} | "
              f"{r['hxe_peak_mib']:8.1f} {r['hxe_overwrite_peak_mib']:8.1f} "
              f"{r['megatron_ce_peak_mib']:8.1f} {ce_mem} {r['logits_mib']:7.1f} "
              f"{r['tokens_x_groups_mib']:6.1f}")


def main(quick: bool = False):
    grid = QUICK_GRID if quick else GRID
    started = time.perf_counter()
    rows = run_ranks(_bench_rank, 2, grid, 5, 3)[0]
    device = (f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()});"
              " no GPU is lent to this task, so NCCL and GPU timings are not measured")
    print(f"device: {device}; torch {torch.__version__}; fp32 logits; hxe alpha 0.4 "
          "normalised; times are median fwd+bwd; MiB = peak RSS growth per rank (rank 0)")
    print("6-mer vocabulary capped at 64k tokens on CPU (256k x 4096 fp32 = 4 GiB a copy)")
    _print_table(rows)
    write_results(RESULTS, {
        "device": device, "torch": torch.__version__, "python": platform.python_version(),
        "config": {"loss": "hxe", "alpha": 0.4, "normalized": True, "dtype": "float32",
                   "grid": grid, "threads_per_rank": 1,
                   "memory": "peak RSS growth during fwd+bwd, rank 0, logits preallocated"},
        "rows": rows, "wall_seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
