"""Training throughput of helm_scale against the HELM reference stack's model.

Ours: HelmTransformer (megatron-core layers) + the vocab-parallel HXE + our engine (DDP
backend, world of one). Peer: Hugging Face transformers' GPT2LMHeadModel at the same
size, batch and sequence length, with a plain PyTorch loop (AdamW, its built-in
cross-entropy), as the HELM reference trains. Both get the same in-memory random codon
batches, so the loader is out of the comparison; they run alternately in one process.

FLOPs per token (both models, same shapes): 6 x (L(4h^2 + 2hf) + V h) + 12 L h S,
forward + backward, attention included (helm_scale.model.ModelConfig.flops_per_token).

Usage:
  python benchmarks/train_throughput.py                       # CPU: a small size
  python benchmarks/train_throughput.py --config configs/helm_50m.yaml --batch 128 --bf16   # GPU
  python benchmarks/train_throughput.py --config configs/helm_1b.yaml --batch 16 --bf16 --activation-checkpointing
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results_io import write_results  # noqa: E402  (beside this script)


def _ours(cfg, batch, device, bf16, recompute):
    from helm_scale.codon import Vocabulary
    from helm_scale.losses import LossConfig, build_loss
    from helm_scale.model import HelmTransformer
    from helm_scale.parallel import OptimizerConfig, ParallelConfig, build_engine, init_parallel
    pcfg = ParallelConfig(backend="deepspeed" if bf16 and device.type == "cpu" else "ddp",
                          precision="bf16" if bf16 else "fp32", activation_checkpointing=recompute)
    state = init_parallel(pcfg)
    engine = build_engine(HelmTransformer(cfg), OptimizerConfig(lr=1e-4), pcfg, state)
    loss_fn = build_loss(LossConfig(name="hxe", overwrite_logits=True), Vocabulary.default(),
                         cfg.padded_vocab_size)
    input_ids, labels = batch
    mask = torch.ones_like(labels, dtype=torch.bool)

    def step():
        logits = engine(input_ids)
        out = loss_fn(logits.float() if bf16 else logits, labels, mask)
        engine.backward(out.loss)
        engine.step()
    return step, engine.module


def _peer(cfg, batch, device, bf16, recompute):
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.padded_vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.ffn_hidden_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2)).to(device)
    if recompute:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    input_ids, _ = batch

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, model


def _time(step, warmup, steps, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a configs/*.yaml whose model section to use (default: a small CPU size)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None, help="default: the model's max_seq_len")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--activation-checkpointing", action="store_true",
                    help="recompute every block in backward, in both stacks")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    import warnings
    warnings.filterwarnings("ignore")
    from helm_scale.model import ModelConfig
    from helm_scale.observe import device_peak_tflops
    from helm_scale.train_config import load_train_config
    cfg = (load_train_config(args.config).model if args.config else
           ModelConfig(num_layers=4, hidden_size=256, ffn_hidden_size=1024, num_heads=4, max_seq_len=128))
    seq = args.seq_len or cfg.max_seq_len
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 69, (args.batch, seq), generator=gen).to(device)
    batch = (ids, torch.roll(ids, -1, 1))
    recompute = args.activation_checkpointing
    runners = {"helm_scale": _ours(cfg, batch, device, args.bf16, recompute),
               "hf_gpt2": _peer(cfg, batch, device, args.bf16, recompute)}
    best = {name: float("inf") for name in runners}
    for _ in range(args.repeat):  # alternate, so machine load hits both alike
        for name, (step, _) in runners.items():
            best[name] = min(best[name], _time(step, args.warmup, args.steps, device))
    flops, peak = cfg.flops_per_token(seq), device_peak_tflops(None)
    tokens = args.batch * seq
    rows = {}
    print(f"model {cfg.num_layers}x{cfg.hidden_size}x{cfg.ffn_hidden_size}, {cfg.num_parameters():,} params, "
          f"batch {args.batch} x {seq}, {'bf16' if args.bf16 else 'fp32'}, {device}"
          + (", activation checkpointing" if recompute else ""))
    print(f"{'stack':<12} {'step ms':>9} {'tokens/s':>12} {'TFLOP/s':>9} {'MFU':>7} {'params':>12}")
    for name, seconds in best.items():
        model = runners[name][1]
        rows[name] = {"step_s": seconds, "tokens_per_s": tokens / seconds,
                      "tflops": tokens / seconds * flops / 1e12,
                      "mfu": (tokens / seconds * flops / 1e12 / peak) if peak else None,
                      "parameters": sum(p.numel() for p in model.parameters())}
        r = rows[name]
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        print(f"{name:<12} {seconds * 1e3:>9.1f} {r['tokens_per_s']:>12,.0f} {r['tflops']:>9.3f} "
              f"{mfu:>7} {r['parameters']:>12,}")
    ratio = rows["helm_scale"]["tokens_per_s"] / rows["hf_gpt2"]["tokens_per_s"]
    print(f"helm_scale / hf_gpt2 tokens/s: {ratio:.2f}x")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"train_throughput_{device.type}.json")
    write_results(out, {
        "benchmark": "train_throughput", "device": torch.cuda.get_device_name() if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores)", "torch": torch.__version__, "python": platform.python_version(),
        "model": cfg.__dict__, "batch": args.batch, "seq_len": seq, "bf16": args.bf16,
        "activation_checkpointing": recompute,
        "flops_per_token": flops, "results": rows, "ratio_tokens_per_s": ratio,
        "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
