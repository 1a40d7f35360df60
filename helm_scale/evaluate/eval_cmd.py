"""Evaluate exported models and baselines: intrinsic, generation, mutation, ngram, downstream, annotate.

  helm-scale eval intrinsic EXPORT --data SHARD_DIR [--split test] [--max-batches N]
      loss, perplexity (true codon cross-entropy), per-level HXE terms, codon and
      synonymous accuracy on a held-out split; CLM or MLM exports
  helm-scale eval generation GENERATED.fasta --reference REAL.fasta[.gz]|SHARD_DIR [--model EXPORT]
      GC content, codon-usage Jensen-Shannon divergence, valid-ORF fraction, diversity,
      and with --model the Frechet distance and k-NN precision / recall in the model's
      embedding space; writes a codon-usage plot (PNG)
  helm-scale eval ngram (--data SHARD_DIR | --train PATH --test PATH) [--order 5] [--level nucleotide]
      fits an n-gram baseline (interpolated Kneser-Ney or add-k) and reports its
      per-nucleotide perplexity on the test sequences; --save keeps it for `eval mutation`
  helm-scale eval mutation EXPORT_OR_NGRAM.npz --data FASTA|SHARD_DIR [-n 500] [--edits 1 5 10]
      accuracy of preferring real sequences over copies with k random insertions,
      deletions, substitutions or swaps, by lower per-nucleotide perplexity

Each prints one JSON object on stdout (and writes it to -o FILE); bad input exits with 2.
`eval downstream` and `eval annotate` (downstream.py, annotation.py) write their own tables.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="also write the JSON result to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_command", required=True, metavar="WHAT")

    q = sub.add_parser("intrinsic", help="loss, perplexity, per-level terms and accuracies on held-out shards",
                       description=_intrinsic.__doc__)
    q.add_argument("export", help="export directory (helm-scale export)")
    q.add_argument("--data", required=True, help="prepared dataset directory (helm-scale prep)")
    q.add_argument("--split", default="test", choices=("train", "val", "test"), help="split (default test)")
    q.add_argument("--max-batches", type=int, default=None, help="stop after N batches (default: the whole split)")
    q.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default 16)")
    q.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the training data.seq_len)")
    q.add_argument("--device", default="cpu", help="torch device (default cpu)")
    _common(q)
    q.set_defaults(_eval=_intrinsic)

    q = sub.add_parser("generation", help="metrics of generated sequences against real ones",
                       description=_generation.__doc__)
    q.add_argument("generated", help="FASTA of generated sequences (helm-scale generate)")
    q.add_argument("--reference", required=True, help="real sequences: FASTA(.gz) or a prepared dataset directory")
    q.add_argument("--split", default="test", help="split of a dataset directory --reference (default test)")
    q.add_argument("--model", help="export whose embeddings the Frechet distance and precision / recall use")
    q.add_argument("--max-pairs", type=int, default=1000, help="sequence pairs for diversity (default 1000)")
    q.add_argument("--max-embed", type=int, default=1000, help="sequences embedded per side (default 1000)")
    q.add_argument("--plot", help="codon-usage PNG (default: next to GENERATED, .codon_usage.png)")
    q.add_argument("--no-plot", action="store_true", help="do not draw the codon-usage plot")
    q.add_argument("--seed", type=int, default=0, help="seed of the pair and embedding samples")
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--device", default="cpu")
    _common(q)
    q.set_defaults(_eval=_generation)

    q = sub.add_parser("ngram", help="fit an n-gram baseline and report its per-nucleotide perplexity",
                       description=_ngram.__doc__)
    q.add_argument("--data", help="prepared dataset directory: fit on its train split, test on --test-split")
    q.add_argument("--train", help="training sequences: FASTA(.gz) or dataset directory")
    q.add_argument("--test", help="test sequences: FASTA(.gz) or dataset directory")
    q.add_argument("--train-split", default="train")
    q.add_argument("--test-split", default="test")
    q.add_argument("--order", type=int, default=5, help="n (default 5)")
    q.add_argument("--level", choices=("nucleotide", "codon"), default="nucleotide")
    q.add_argument("--smoothing", choices=("kneser-ney", "add-k"), default="kneser-ney",
                   help="interpolated Kneser-Ney (default) or add-k (k = 1: Laplace)")
    q.add_argument("--k", type=float, default=1.0, help="add-k's k (default 1)")
    q.add_argument("--discount", type=float, default=None,
                   help="fixed Kneser-Ney discount (default: n1 / (n1 + 2 n2) per order)")
    q.add_argument("--save", help="write the fitted model (.npz) for `eval mutation`")
    _common(q)
    q.set_defaults(_eval=_ngram)

    q = sub.add_parser("mutation", help="tell real sequences from randomly edited copies",
                       description=_mutation.__doc__)
    q.add_argument("scorer", help="export directory (causal model) or n-gram model .npz (eval ngram --save)")
    q.add_argument("--data", required=True, help="real sequences: FASTA(.gz) or dataset directory")
    q.add_argument("--split", default="test", help="split of a dataset directory (default test)")
    q.add_argument("-n", type=int, default=500, help="real sequences drawn (seeded; default 500)")
    q.add_argument("--edits", type=int, nargs="+", default=[1, 5, 10], help="edit counts (default 1 5 10)")
    q.add_argument("--kinds", nargs="+", default=["insert", "delete", "substitute", "swap"],
                   choices=("insert", "delete", "substitute", "swap"))
    q.add_argument("--max-nt", type=int, default=None,
                   help="skip longer sequences (default: what the model's positions hold after the "
                        "largest insertion; none for n-grams)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--device", default="cpu")
    _common(q)
    q.set_defaults(_eval=_mutation)

    # Property prediction and region annotation: their modules own their arguments and run().
    for name, module_name in (("downstream", "helm_scale.evaluate.downstream"),
                              ("annotate", "helm_scale.evaluate.annotation")):
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        q = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(q)
        q.set_defaults(_run=module.run)


def _load_export(path: str, device: str):
    from helm_scale.evaluate.sequences import EvalInputError
    from helm_scale.export import load_exported
    try:
        return load_exported(path, device=device)
    except (FileNotFoundError, ValueError) as e:  # not an export, bad checksum, other vocabulary
        raise EvalInputError(str(e)) from None


def _intrinsic(args) -> dict:
    """Intrinsic metrics of an export on a held-out split (see helm_scale.evaluate.intrinsic)."""
    from helm_scale.evaluate.intrinsic import evaluate_intrinsic
    exported = _load_export(args.export, args.device)
    return evaluate_intrinsic(exported, args.data, args.split, args.max_batches, args.batch_size,
                              args.seq_len, progress=not args.quiet)


def _generation(args) -> dict:
    """Generated vs real sequences: GC, codon usage (Jensen-Shannon), ORFs, diversity, Frechet."""
    from helm_scale.evaluate.metrics import generation_metrics, plot_codon_usage
    from helm_scale.evaluate.sequences import read_sequences
    generated = read_sequences(args.generated)
    reference = read_sequences(args.reference, args.split)
    exported = _load_export(args.model, args.device) if args.model else None
    out = generation_metrics(generated, reference, exported, args.max_pairs, args.max_embed, args.seed,
                             args.batch_size, progress=not args.quiet)
    out.update(generated_file=str(args.generated), reference=str(args.reference), model=args.model)
    if not args.no_plot:
        plot = args.plot or str(Path(args.generated).with_suffix("")) + ".codon_usage.png"
        out["plot"] = str(plot_codon_usage(generated, reference, plot))
    return out


def _acgt_only(seqs: list[str]) -> tuple[list[str], int]:
    from helm_scale.evaluate.sequences import is_acgt
    kept = [s for s in seqs if is_acgt(s)]
    return kept, len(seqs) - len(kept)


def _ngram(args) -> dict:
    """Fit an n-gram model (training split or file) and score the test sequences."""
    from helm_scale.evaluate.ngram import NgramLM
    from helm_scale.evaluate.sequences import EvalInputError, read_sequences
    train_path, test_path = args.train or args.data, args.test or args.data
    if not train_path or not test_path:
        raise EvalInputError("give --data DATASET_DIR, or both --train and --test")
    started = time.perf_counter()
    train, train_skipped = _acgt_only(read_sequences(train_path, args.train_split))
    test, test_skipped = _acgt_only(read_sequences(test_path, args.test_split))
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


def _mutation(args) -> dict:
    """Accuracy of choosing the real sequence over its edited copies, per kind and edit count."""
    import random

    from helm_scale.evaluate.mutation import (
        model_score_fn,
        mutation_detection,
        ngram_score_fn,
    )
    from helm_scale.evaluate.ngram import NgramLM
    from helm_scale.evaluate.sequences import EvalInputError, read_sequences
    scorer = Path(args.scorer)
    if (scorer / "export.json").is_file():
        exported = _load_export(args.scorer, args.device)
        score_fn = model_score_fn(exported, args.batch_size, progress=not args.quiet)
        capacity = 3 * (exported.config.model.max_seq_len - 2) - max(args.edits)
        max_nt = args.max_nt if args.max_nt is not None else capacity
        if max_nt > capacity:
            raise EvalInputError(f"--max-nt {max_nt} exceeds what the model's {exported.config.model.max_seq_len} "
                                 f"positions hold after {max(args.edits)} insertions ({capacity} nt)")
        kind = "export"
    elif scorer.is_file() and scorer.suffix == ".npz":
        score_fn, max_nt, kind = ngram_score_fn(NgramLM.load(scorer)), args.max_nt, "ngram"
    else:
        raise EvalInputError(f"{scorer} is neither an export directory (with export.json) nor an n-gram .npz")
    if args.n < 1 or min(args.edits) < 1:
        raise EvalInputError("need -n >= 1 and every edit count >= 1")
    seqs, non_acgt = _acgt_only(read_sequences(args.data, args.split))
    minimum = 2 * max(args.edits) + 2  # room for k non-overlapping swaps in most sequences
    fit = [s for s in seqs if len(s) >= minimum and (max_nt is None or len(s) <= max_nt)]
    if not fit:
        raise EvalInputError(f"no sequence of {args.data} has {minimum}..{max_nt} nt")
    chosen = fit if len(fit) <= args.n else random.Random(args.seed).sample(fit, args.n)
    out = mutation_detection(score_fn, chosen, args.edits, args.kinds, args.seed, progress=not args.quiet)
    out.update(scorer=str(scorer), scorer_kind=kind, data=str(args.data), max_nt=max_nt,
               skipped={"non_acgt": non_acgt, "length": len(seqs) - len(fit)})
    return out


def run(args) -> int:
    if hasattr(args, "_run"):
        return args._run(args)
    from helm_scale.evaluate.sequences import EvalInputError
    try:
        result = args._eval(args)
    except (EvalInputError, FileNotFoundError, FileExistsError) as e:
        print(f"helm-scale eval {args.eval_command}: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0
