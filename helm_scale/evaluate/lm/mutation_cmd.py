"""Tell real sequences from copies with random edits, by lower per-nucleotide perplexity.

  helm-scale eval mutation EXPORT_OR_NGRAM.npz --data FASTA|SHARD_DIR [-n 500] [--edits 1 5 10]

The scorer is a causal export or an n-gram model (eval ngram --save). For each of -n real
sequences (seeded) and each edit kind and count, one copy with that many random
insertions, deletions, substitutions or swaps; accuracy is the share of pairs where the
real sequence scores the lower per-nucleotide NLL (helm_scale.evaluate.lm.mutation).
Prints one JSON object.
"""
from __future__ import annotations

import argparse

from helm_scale.evaluate import cli

KINDS = ("insert", "delete", "substitute", "swap")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scorer", help="export directory (causal model) or n-gram model .npz (eval ngram --save)")
    p.add_argument("--data", required=True, help="real sequences: FASTA(.gz) or dataset directory")
    cli.add_split(p)
    p.add_argument("-n", type=int, default=500, help="real sequences drawn (seeded; default 500)")
    p.add_argument("--edits", type=int, nargs="+", default=[1, 5, 10], help="edit counts (default 1 5 10)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="edit kinds (default all)")
    p.add_argument("--max-nt", type=int, default=None,
                   help="skip longer sequences (default: what the model's positions hold after the "
                        "largest insertion; none for n-grams)")
    cli.add_seed(p, "the drawn sequences and their edits")
    cli.add_batch_size(p)
    cli.add_json_output(p)
    cli.add_runtime(p)


def _scorer(args):
    """(score_fn, longest sequence it takes, kind) of an export or an n-gram .npz."""
    from pathlib import Path

    from helm_scale.evaluate.baselines.ngram import NgramLM
    from helm_scale.evaluate.lm.mutation import model_score_fn, ngram_score_fn
    from helm_scale.evaluate.sequences import EvalInputError
    scorer = Path(args.scorer)
    if (scorer / "export.json").is_file():
        exported = cli.load_export(scorer, args.device)
        positions = exported.config.model.max_seq_len
        capacity = 3 * (positions - 2) - max(args.edits)
        max_nt = args.max_nt if args.max_nt is not None else capacity
        if max_nt > capacity:
            raise EvalInputError(f"--max-nt {max_nt} exceeds what the model's {positions} "
                                 f"positions hold after {max(args.edits)} insertions ({capacity} nt)")
        return model_score_fn(exported, args.batch_size, progress=not args.quiet), max_nt, "export"
    if scorer.is_file() and scorer.suffix == ".npz":
        return ngram_score_fn(NgramLM.load(scorer)), args.max_nt, "ngram"
    raise EvalInputError(f"{scorer} is neither an export directory (with export.json) nor an n-gram .npz")


def _mutation(args) -> dict:
    import random

    from helm_scale.evaluate.lm.mutation import mutation_detection
    from helm_scale.evaluate.sequences import EvalInputError, read_acgt
    score_fn, max_nt, kind = _scorer(args)
    if args.n < 1 or min(args.edits) < 1:
        raise EvalInputError("need -n >= 1 and every edit count >= 1")
    seqs, non_acgt = read_acgt(args.data, args.split)
    minimum = 2 * max(args.edits) + 2  # room for k non-overlapping swaps in most sequences
    fit = [s for s in seqs if len(s) >= minimum and (max_nt is None or len(s) <= max_nt)]
    if not fit:
        raise EvalInputError(f"no sequence of {args.data} has {minimum}..{max_nt} nt")
    chosen = fit if len(fit) <= args.n else random.Random(args.seed).sample(fit, args.n)
    out = mutation_detection(score_fn, chosen, args.edits, args.kinds, args.seed, progress=not args.quiet)
    out.update(scorer=str(args.scorer), scorer_kind=kind, data=str(args.data), max_nt=max_nt,
               skipped={"non_acgt": non_acgt, "length": len(seqs) - len(fit)})
    return out


def run(args) -> int:
    return cli.run_command("helm-scale eval mutation", _mutation, args)
