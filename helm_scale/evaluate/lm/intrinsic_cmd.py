"""Loss, perplexity, per-level HXE terms and accuracies of an export on held-out shards.

  helm-scale eval intrinsic EXPORT --data SHARD_DIR [--split test] [--max-batches N]

The trainer's loader and losses on one device (helm_scale.evaluate.lm.intrinsic): the
training objective's loss and per-level terms, the true codon cross-entropy and its
perplexity, codon / synonymous / start-stop accuracy, and for CLM exports the
per-nucleotide perplexity. Every sample of the split, CLM or MLM. Prints one JSON object.
"""
from __future__ import annotations

import argparse

from helm_scale.evaluate import cli


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_export(p)
    p.add_argument("--data", required=True, help="prepared dataset directory (helm-scale prep)")
    cli.add_split(p)
    p.add_argument("--max-batches", type=int, default=None, help="stop after N batches (default: the whole split)")
    cli.add_batch_size(p)
    p.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the training data.seq_len)")
    cli.add_json_output(p)
    cli.add_runtime(p)


def _intrinsic(args) -> dict:
    from helm_scale.evaluate.lm.intrinsic import evaluate_intrinsic
    exported = cli.load_export(args.export, args.device)
    return evaluate_intrinsic(exported, args.data, args.split, args.max_batches, args.batch_size,
                              args.seq_len, progress=not args.quiet)


def run(args) -> int:
    return cli.run_command("helm-scale eval intrinsic", _intrinsic, args)
