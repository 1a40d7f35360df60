"""What a run reports: TensorBoard scalars and one concise console line per interval (rank 0).

Throughput: tokens are real (non-padding) input tokens summed over data-parallel ranks.
Achieved FLOP/s = tokens/s x models.registry.flops_per_token(config, seq_len) (forward + backward:
6 x matmul weights + 12 x layers x hidden x seq_len for attention); MFU divides it by
the devices' peak (RunConfig.peak_tflops_per_device, or the dense bf16 peak of known GPUs).
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks, TFLOP/s per device, from the vendors' data sheets.
KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def device_peak_tflops(configured: float | None) -> float | None:
    if configured:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return value
    return None


def memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class RunLogger:
    """Rank 0 writes; other ranks hold a logger that does nothing."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, flops_per_token: float,
                 world_size: int, peak_tflops: float | None):
        self.enabled, self.writer = enabled, None
        self.flops_per_token, self.world_size, self.peak = flops_per_token, world_size, peak_tflops
        self.tb_dir = Path(run_dir) / "tensorboard"
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.tb_dir))
        self._last_time, self._last_tokens = time.perf_counter(), 0
        # Every logged value, one JSON object per line, appended across restarts: exact
        # floats for comparing runs (a resumed step appears again after the original).
        self.jsonl = open(Path(run_dir) / "metrics.jsonl", "a") if enabled else None

    def throughput(self, total_tokens: int, data_seconds: float = 0.0) -> dict[str, float]:
        """Since the last call: tokens/s, TFLOP/s per device, MFU, memory, and data_wait, the
        share of wall time spent waiting for the loader (near 0 when it keeps up)."""
        now = time.perf_counter()
        tokens = total_tokens - self._last_tokens
        seconds = max(now - self._last_time, 1e-9)
        self._last_time, self._last_tokens = now, total_tokens
        tps = tokens / seconds
        out = {"tokens_per_s": tps, "tflops": tps * self.flops_per_token / 1e12 / self.world_size,
               "memory_gib": memory_gib(), "data_wait": min(data_seconds / seconds, 1.0)}
        if self.peak:
            out["mfu"] = out["tflops"] / self.peak
        return out

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"kind": prefix, "step": step, **values}) + "\n")
            self.jsonl.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def train_line(self, step: int, max_steps: int, m: dict[str, float]) -> None:
        mfu = f" | mfu {m['mfu']:.1%}" if "mfu" in m else ""
        self.line(f"step {step:>6}/{max_steps} | loss {m['loss']:.4f} | codon acc {m['codon_accuracy']:.3f}"
                  f" | syn acc {m['synonymous_accuracy']:.3f} | lr {m['lr']:.2e} | gnorm {m['grad_norm']:.3g}"
                  f" | {m['tokens_per_s']:,.0f} tok/s | {m['tflops']:.3f} TFLOP/s/dev{mfu}"
                  f" | data {m['data_wait']:.0%} | mem {m['memory_gib']:.2f} GiB")

    def eval_line(self, step: int, m: dict[str, float]) -> None:
        self.line(f"eval @ {step:>6} | loss {m['loss']:.4f} | ppl {m['perplexity']:.3f} | codon acc "
                  f"{m['codon_accuracy']:.3f} | syn acc {m['synonymous_accuracy']:.3f} | "
                  f"start/stop acc {m['start_stop_accuracy']:.3f}")

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
        sys.stdout.flush()
