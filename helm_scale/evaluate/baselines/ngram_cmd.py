"""Fit an n-gram baseline and report its per-nucleotide perplexity on test sequences.

  helm-scale eval ngram (--data SHARD_DIR | --train PATH --test PATH) [--order 5] [--level nucleotide]

Interpolated Kneser-Ney (or add-k) over nucleotides or codons
(helm_scale.evaluate.baselines.ngram), fitted on the training sequences and scored on the
test ones: exp(total NLL / total nucleotides), every symbol and each sequence's end
predicted. --save keeps the model for `eval mutation`. Prints one JSON object.
"""
from __future__ import annotations

import argparse

from helm_scale.evaluate import cli


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="prepared dataset directory: fit on --train-split, test on --test-split")
    p.add_argument("--train", help="training sequences: FASTA(.gz) or dataset directory (default --data)")
    p.add_argument("--test", help="test sequences: FASTA(.gz) or dataset directory (default --data)")
    cli.add_split(p, "--train-split", "the training dataset directory", default="train")
    cli.add_split(p, "--test-split", "the test dataset directory")
    p.add_argument("--order", type=int, default=5, help="n (default 5)")
    p.add_argument("--level", choices=("nucleotide", "codon"), default="nucleotide",
                   help="symbols: nucleotides or in-frame codons (default nucleotide)")
    p.add_argument("--smoothing", choices=("kneser-ney", "add-k"), default="kneser-ney",
                   help="interpolated Kneser-Ney (default) or add-k (k = 1: Laplace)")
    p.add_argument("--k", type=float, default=1.0, help="add-k's k (default 1)")
    p.add_argument("--discount", type=float, default=None,
                   help="fixed Kneser-Ney discount (default: n1 / (n1 + 2 n2) per order)")
    p.add_argument("--save", help="write the fitted model (.npz) for `eval mutation`")
    cli.add_json_output(p)
    cli.add_runtime(p, device=False)


def _ngram(args) -> dict:
    import math
    import time
    from pathlib import Path

    from helm_scale.evaluate.baselines.ngram import NgramLM
    from helm_scale.evaluate.sequences import EvalInputError, read_acgt
    train_path, test_path = args.train or args.data, args.test or args.data
    if not train_path or not test_path:
        raise EvalInputError("give --data DATASET_DIR, or both --train and --test")
    started = time.perf_counter()
    train, train_skipped = read_acgt(train_path, args.train_split)
    test, test_skipped = read_acgt(test_path, args.test_split)
    if Path(train_path).is_dir() and Path(test_path).resolve() == Path(train_path).resolve() \
            and args.train_split == args.test_split:
        raise EvalInputError("the training and test sequences are the same split")
    try:
        lm = NgramLM(args.order, args.level, args.smoothing, args.k, args.discount)
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    lm.fit(train)
    fitted = time.perf_counter()
    nll, nt = lm.score(test)
    out = {**lm.config(), "per_nucleotide_perplexity": math.exp(nll.sum() / nt.sum()),
           "discounts": lm.discounts if args.smoothing == "kneser-ney" else None,
           "train": str(train_path), "test": str(test_path),
           "train_sequences": len(train), "test_sequences": len(test), "test_nucleotides": int(nt.sum()),
           "skipped_non_acgt": {"train": train_skipped, "test": test_skipped},
           "fit_seconds": fitted - started, "score_seconds": time.perf_counter() - fitted,
           "definition": "exp(total NLL / total nucleotides); every symbol and each sequence's end "
                         "are predicted; codon models count 3 nucleotides per codon"}
    if args.save:
        lm.save(args.save)
        out["saved"] = args.save
    return out


def run(args) -> int:
    return cli.run_command("helm-scale eval ngram", _ngram, args)
