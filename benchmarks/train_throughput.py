"""Training throughput of helm_scale against the HELM reference stack's model.

Ours: TensorParallelTransformer (megatron-core layers) + the vocab-parallel HXE + our engine (DDP
backend, world of one). Peer: Hugging Face transformers' GPT2LMHeadModel (MLM: BERT) at the same
size, batch and sequence length, with a plain PyTorch loop (AdamW, its built-in
cross-entropy), as the HELM reference trains: eager, never compiled. Both get the same
in-memory random codon batches, so the loader is out of the comparison; they run
alternately in one process, and so does the HXE loss alone (forward + backward on fp32
logits of the step's shape, one copy of them included), whose time is reported as a
share of our step.

Batches. By default, random codons fill every row: no padding, no packing, and SDPA gets
is_causal. With --dataset (a directory `helm_scale prep` wrote), the rows are what users
train on: a few micro-batches from our loader, fed as the trainer feeds them. --layout
packed (data.pack): several sequences per row under a block-diagonal attention mask;
--layout padded (data.pad_to_multiple_of 8): one per row, cut at the batch's longest, so
CLM keeps SDPA's is_causal. The peer gets the same sequences one per row with an
attention mask, padded to the longest of the batch (dynamic padding, the peer's best
case) or, with --peer-padding max, to the row length (a tokenizer's
padding="max_length"). Tokens/s then counts real tokens only, so packing is credited
and padding is not; both stacks see the same real tokens each step.

FLOPs per token (both models, same shapes): 6 x (L(4h^2 + 2hf) + V h) + 12 L h S,
forward + backward, attention included (helm_scale.models.registry.flops_per_token),
S the row length; TFLOP/s and MFU count real tokens only.
--backbones mamba hyena and --baseline-scan REV: Mamba and Hyena rows (benchmarks/backbone_rows.py).
Peak memory (CUDA only): the most allocated while the stack was built and warmed up,
above what was allocated before it (so the other stack's tensors do not count).

Usage:
  python -m benchmarks.train_throughput                       # CPU: a small size
  python -m benchmarks.train_throughput --config configs/helm_50m.yaml --batch 128 --bf16 [--compile]   # GPU
  python -m benchmarks.train_throughput --config configs/helm_1b.yaml --batch 16 --bf16 --activation-checkpointing
  add --objective mlm for the bidirectional model with 15% masked codons (peer: HF BERT)
  add --dataset DIR [--layout padded] for real sequences as our loader makes them (see Batches)
  add --backbones mamba hyena for Mamba and Hyena rows of similar parameter count
  add --baseline-scan REV (with mamba) for a row with Mamba's scan at git revision REV
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.backbone_rows import forward_only, scan_at, size_matched, with_scan
from benchmarks.results_io import write_results

ROOT = Path(__file__).resolve().parents[1]


CORPUS_BATCHES = 4  # distinct micro-batches cycled with --dataset: lengths vary between them


def _ours(cfg, batches, device, bf16, recompute, compile_blocks, pack):
    from helm_scale.codon import Vocabulary
    from helm_scale.losses import LossConfig, build_loss
    from helm_scale.models.registry import build_training_model
    from helm_scale.parallel import OptimizerConfig, ParallelConfig, build_engine, init_parallel
    from helm_scale.trainer import optimizer_step
    pcfg = ParallelConfig(backend="deepspeed" if bf16 and device.type == "cpu" else "ddp",
                          precision="bf16" if bf16 else "fp32", activation_checkpointing=recompute,
                          compile=compile_blocks)
    state = init_parallel(pcfg)
    engine = build_engine(build_training_model(cfg), OptimizerConfig(lr=1e-4), pcfg, state)
    vocab = Vocabulary.default()
    loss_fn = build_loss(LossConfig(name="hxe", overwrite_logits=True), vocab, cfg.padded_vocab_size)
    turns, objective = itertools.cycle(batches), "clm" if cfg.attention == "causal" else "mlm"
    pack = pack and "segment_ids" in batches[0]  # synthetic rows: one full sequence each

    def step():  # the trainer's own step (global token count, loss sums), one micro-batch
        optimizer_step(engine, loss_fn, [next(turns)], state, pack, objective, vocab.pad_id)

    labels, mask = batches[0]["labels"], batches[0]["loss_mask"]
    logits = torch.randn(*labels.shape, cfg.padded_vocab_size, device=device) * 3

    def loss_alone():
        loss_fn(logits.clone().requires_grad_(True), labels, mask).loss.backward()
    return step, engine.module, loss_alone


def _peer(cfg, batches, device, bf16, recompute):
    """GPT-2 for CLM; for MLM, BERT (HF has no bidirectional GPT-2) at the same width, depth,
    heads and FFN: its MLM head adds one h x h transform, under 1% of the FLOPs at 50M."""
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
    if cfg.attention == "causal":
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=cfg.padded_vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.ffn_hidden_size,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2))
    else:
        model = BertForMaskedLM(BertConfig(
            vocab_size=cfg.padded_vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_hidden_size,
            max_position_embeddings=cfg.max_seq_len, type_vocab_size=1, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, pad_token_id=0))
    model = model.to(device)
    if recompute:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    turns = itertools.cycle(batches)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**next(turns)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, model, None


def _synthetic_batch(rows: int, seq: int, objective: str) -> dict:
    """Random codons in every slot; CLM predicts the next one everywhere, MLM the 15% it
    replaced by <mask>."""
    from helm_scale.codon import Vocabulary
    vocab, gen = Vocabulary.default(), torch.Generator().manual_seed(0)
    lo, hi = int(vocab.codon_lookup.min()), int(vocab.codon_lookup.max()) + 1
    ids = torch.randint(lo, hi, (rows, seq), generator=gen)
    if objective == "clm":
        return {"input_ids": ids, "labels": torch.roll(ids, -1, 1),
                "loss_mask": torch.ones(rows, seq, dtype=torch.bool)}
    masked = torch.rand(rows, seq, generator=gen) < 0.15
    return {"input_ids": ids.masked_fill(masked, vocab.mask_id), "labels": ids, "loss_mask": masked}


def _corpus_batches(dataset: str, rows: int, seq: int, objective: str, pack: bool, count: int) -> list[dict]:
    """The first ``count`` micro-batches the trainer's loader makes of a prepared dataset
    (a job's data section with these settings, and the default job seed)."""
    from helm_scale.data import DataConfig, LoaderConfig, build_loader
    from helm_scale.parallel import ParallelConfig
    data = DataConfig(dataset_dir=dataset, objective=objective, seq_len=seq, micro_batch_size=rows, pack=pack,
                      pad_to_multiple_of=0 if pack else 8, num_workers=0)
    loader = build_loader(LoaderConfig.from_data(data, ParallelConfig().seed))
    batches = [batch for batch, _ in zip(loader, range(count))]
    if len(batches) < count:
        raise SystemExit(f"{dataset}: fewer than {count} micro-batches of {rows} rows")
    return batches


def _for_peer(batch: dict, objective: str, pad_to_row: bool) -> dict:
    """The HF model's arguments for the same sequences: one per row (when ours are packed),
    padded to the longest or to our row length, loss where ours has it. GPT-2 shifts its
    labels itself."""
    if "segment_ids" not in batch:  # synthetic: full rows, nothing to unpack
        labels = batch["input_ids"] if objective == "clm" else batch["labels"].masked_fill(~batch["loss_mask"], -100)
        return {"input_ids": batch["input_ids"], "labels": labels}
    from helm_scale.codon import Vocabulary
    segments = batch["segment_ids"]
    pieces = [(row, seg) for row in range(len(segments)) for seg in segments[row].unique().tolist() if seg]
    longest = segments.shape[1] if pad_to_row else max(int((segments[row] == seg).sum()) for row, seg in pieces)
    ids = torch.full((len(pieces), longest), Vocabulary.default().pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attention = torch.zeros_like(ids)
    for i, (row, seg) in enumerate(pieces):
        where = segments[row] == seg
        n = int(where.sum())
        ids[i, :n], attention[i, :n] = batch["input_ids"][row][where], 1
        labels[i, :n] = ids[i, :n] if objective == "clm" else batch["labels"][row][where]
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def _real_tokens(batch: dict) -> int:
    mask = batch.get("attention_mask", batch.get("segment_ids"))
    return batch["input_ids"].numel() if mask is None else int((mask > 0).sum())


def _build_and_warm(build, warmup, device):
    """(runner, peak GiB above what was allocated before it; None off CUDA)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    runner = build()
    for _ in range(warmup):  # the first steps also compile, and create the optimizer state
        runner[0]()
    if not cuda:
        return runner, None
    torch.cuda.synchronize()
    return runner, (torch.cuda.max_memory_allocated() - base) / 2**30


def _top_ops(step, device, steps=3, top=12) -> list[dict]:
    """The ops that take the most time over a few steps (self time: where a kernel is spent,
    not its callers), on the GPU where there is one: what to fuse next."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "calls_per_step": e.count / steps, "self_ms_per_step": getattr(e, key) / 1e3 / steps}
            for e in events]


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


def _versions() -> dict:
    import deepspeed
    import megatron.core
    import transformers
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__,
            "megatron_core": megatron.core.__version__, "transformers": transformers.__version__}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a configs/*.yaml whose model section to use (default: a small CPU size)")
    ap.add_argument("--objective", choices=("clm", "mlm"), default="clm",
                    help="mlm: bidirectional attention, loss on 15%% masked codons; the peer is BERT")
    ap.add_argument("--dataset", help="a prepared dataset (helm_scale prep): real sequences in our loader's "
                    "rows (--layout), the peer's padded; default: random codons in full rows")
    ap.add_argument("--layout", choices=("packed", "padded"), default="packed",
                    help="with --dataset: our rows packed, or one sequence each cut at the batch's longest")
    ap.add_argument("--peer-padding", choices=("longest", "max"), default="longest",
                    help="with --dataset: pad the peer's rows to the batch's longest sequence, or to --seq-len")
    ap.add_argument("--batch", type=int, default=8, help="rows per step (ours: packed rows with --layout packed)")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the model's max_seq_len")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--activation-checkpointing", action="store_true",
                    help="recompute every block in backward, in both stacks")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile our transformer blocks (parallel.compile); the peer stays eager")
    ap.add_argument("--profile", action="store_true",
                    help="also record each stack's most expensive ops over 3 steps (torch.profiler)")
    ap.add_argument("--backbones", nargs="*", choices=("mamba", "hyena"), default=[],
                    help="also time HELM's Mamba / Hyena of similar parameter count (our engine and HXE)")
    ap.add_argument("--baseline-scan", metavar="REV",
                    help="with --backbones mamba: also time Mamba with the selective scan of git revision REV")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    import warnings
    warnings.filterwarnings("ignore")
    from helm_scale.models.config import ModelConfig
    from helm_scale.models.registry import flops_per_token, num_parameters
    from helm_scale.observe import device_peak_tflops
    from helm_scale.train_config import load_train_config
    cfg = (load_train_config(args.config).model if args.config else
           ModelConfig(num_layers=4, hidden_size=256, ffn_hidden_size=1024, num_heads=4,
                       max_seq_len=args.seq_len or 128))
    cfg = dataclasses.replace(cfg, attention="causal" if args.objective == "clm" else "bidirectional")
    seq = args.seq_len or cfg.max_seq_len
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pack = args.layout == "packed"
    ours = (_corpus_batches(args.dataset, args.batch, seq, args.objective, pack, CORPUS_BATCHES) if args.dataset
            else [_synthetic_batch(args.batch, seq, args.objective)])
    peers = [_for_peer(b, args.objective, args.peer_padding == "max") for b in ours]
    ours, peers = ([{k: v.to(device) for k, v in b.items()} for b in bs] for bs in (ours, peers))
    # Every timed and warm-up run covers each batch equally often.
    steps, warmup = (-(-n // len(ours)) * len(ours) for n in (args.steps, args.warmup))
    recompute = args.activation_checkpointing
    peer_name = "hf_gpt2" if args.objective == "clm" else "hf_bert"
    builders = {"helm_scale": lambda: _ours(cfg, ours, device, args.bf16, recompute, args.compile, pack),
                peer_name: lambda: _peer(cfg, peers, device, args.bf16, recompute)}
    configs, batches_of = {"helm_scale": cfg, peer_name: cfg}, {"helm_scale": ours, peer_name: peers}
    unpacked = ours
    if args.backbones and args.dataset and pack:
        unpacked = [{k: v.to(device) for k, v in b.items()} for b in
                    _corpus_batches(args.dataset, args.batch, seq, args.objective, False, CORPUS_BATCHES)]
    for arch in args.backbones:
        name, configs[f"helm_{arch}"] = f"helm_{arch}", size_matched(cfg, arch)
        batches_of[name] = unpacked
        builders[name] = (lambda c: lambda: _ours(c, unpacked, device, args.bf16, recompute, args.compile,
                                                  False))(configs[name])
    old_scan = None
    if args.baseline_scan:
        if "mamba" not in args.backbones:
            ap.error("--baseline-scan needs --backbones mamba")
        old_scan, name = scan_at(args.baseline_scan), f"helm_mamba@{args.baseline_scan}"
        configs[name], batches_of[name] = configs["helm_mamba"], unpacked
        builders[name] = with_scan(builders["helm_mamba"], old_scan)
    runners, peak_gib = {}, {}
    for name, build in builders.items():
        runners[name], peak_gib[name] = _build_and_warm(build, warmup, device)
    timed = {**{name: runner[0] for name, runner in runners.items()}, "hxe_loss": runners["helm_scale"][2]}
    forward_rows = [name for name in runners if configs[name].arch in ("mamba", "hyena")]
    for name in forward_rows:
        timed[f"{name} forward"] = forward_only(runners[name][1], batches_of[name],
                                                 old_scan if "@" in name else None)
    best = {name: float("inf") for name in timed}
    for _ in range(args.repeat):  # alternate, so machine load hits all alike
        for name, step in timed.items():
            best[name] = min(best[name], _time(step, warmup, steps, device))
    flops, peak = flops_per_token(cfg, seq), device_peak_tflops(None)
    # Real tokens per step: the same for ours and the peer (and the backbones but when
    # they get the unpacked rows of a packed run).
    stack_tokens = {name: sum(map(_real_tokens, bs)) / len(bs) for name, bs in batches_of.items()}
    stack_tokens[peer_name] = tokens = stack_tokens["helm_scale"]
    padding = {name: 1 - stack_tokens[name] * len(bs) / sum(b["input_ids"].numel() for b in bs)
               for name, bs in batches_of.items()}
    rows = {}
    print(f"{args.objective}, model {cfg.num_layers}x{cfg.hidden_size}x{cfg.ffn_hidden_size}, "
          f"{num_parameters(cfg):,} params, "
          f"batch {args.batch} x {seq}, {'bf16' if args.bf16 else 'fp32'}, {device}, "
          + (f"{args.dataset}: ours {args.layout}, peer padded to {args.peer_padding}" if args.dataset
             else "random codons, full rows")
          + (", activation checkpointing" if recompute else "") + (", ours compiled" if args.compile else ""))
    width = max(map(len, runners))
    print(f"{'stack':<{width}} {'step ms':>9} {'tokens/s':>12} {'TFLOP/s':>9} {'MFU':>7} {'padding':>8} "
          f"{'peak GiB':>9} {'params':>12}")
    for name in runners:
        seconds, model = best[name], runners[name][1]
        stack_flops, n = flops_per_token(configs[name], seq), stack_tokens[name]
        rows[name] = {"step_s": seconds, "tokens_per_s": n / seconds, "real_tokens_per_step": n,
                      "tflops": n / seconds * stack_flops / 1e12,
                      "mfu": (n / seconds * stack_flops / 1e12 / peak) if peak else None,
                      "model": f"{configs[name].arch} {configs[name].num_layers}x{configs[name].hidden_size}"
                               f"x{configs[name].ffn_hidden_size}",
                      "padding": padding[name], "peak_gib": peak_gib[name],
                      "parameters": sum(p.numel() for p in model.parameters())}
        if name in forward_rows:
            rows[name]["forward_only_tokens_per_s"] = n / best[f"{name} forward"]
        r = rows[name]
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        mem = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{name:<{width}} {seconds * 1e3:>9.1f} {r['tokens_per_s']:>12,.0f} {r['tflops']:>9.3f} "
              f"{mfu:>7} {r['padding']:>8.1%} {mem:>9} {r['parameters']:>12,}")
    hxe_share = best["hxe_loss"] / best["helm_scale"]
    print(f"HXE loss alone (fwd+bwd): {best['hxe_loss'] * 1e3:.2f} ms = {hxe_share:.1%} of our step")
    profiles = {name: _top_ops(runner[0], device) for name, runner in runners.items()} if args.profile else {}
    for name, ops in profiles.items():
        print(f"{name}: most expensive ops, ms per step (self time)")
        for op in ops:
            print(f"  {op['self_ms_per_step']:9.2f}  x{op['calls_per_step']:<6g} {op['op'][:90]}")
    ratio = rows["helm_scale"]["tokens_per_s"] / rows[peer_name]["tokens_per_s"]
    print(f"helm_scale / {peer_name} tokens/s: {ratio:.2f}x")
    for name in forward_rows:
        r = rows[name]
        print(f"{name} ({r['model']}) / helm_scale transformer tokens/s: "
              f"{r['tokens_per_s'] / rows['helm_scale']['tokens_per_s']:.2f}x; forward only "
              f"{r['forward_only_tokens_per_s']:,.0f} tokens/s")
    if args.baseline_scan:
        new, old = rows["helm_mamba"], rows[f"helm_mamba@{args.baseline_scan}"]
        print(f"helm_mamba, this scan / the scan at {args.baseline_scan}: training "
              f"{new['tokens_per_s'] / old['tokens_per_s']:.2f}x, forward only "
              f"{new['forward_only_tokens_per_s'] / old['forward_only_tokens_per_s']:.2f}x")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"train_throughput_{device.type}.json")
    write_results(out, {
        "benchmark": "train_throughput", "device": torch.cuda.get_device_name() if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores)", "torch": torch.__version__, "python": platform.python_version(),
        "versions": _versions(), "objective": args.objective, "model": cfg.__dict__, "batch": args.batch,
        "seq_len": seq, "bf16": args.bf16, "dataset": args.dataset, "real_tokens_per_step": tokens,
        "layout": args.layout if args.dataset else None, "peer_padding": args.peer_padding if args.dataset else None,
        "peer_sequences_per_step": sum(len(b["input_ids"]) for b in peers) / len(peers),
        "activation_checkpointing": recompute, "compile_ours": args.compile,
        "hxe_loss_s": best["hxe_loss"], "hxe_share_of_step": hxe_share,
        "flops_per_token": flops, "results": rows, "ratio_tokens_per_s": ratio, "profile": profiles,
        "backbones": {arch: configs[f"helm_{arch}"].__dict__ for arch in args.backbones},
        "baseline_scan": args.baseline_scan,
        "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
