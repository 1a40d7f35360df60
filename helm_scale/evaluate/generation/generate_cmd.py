"""Sample codon sequences from a causal (CLM) export into a FASTA file.

Only codons and <eos> are ever drawn. Defaults follow the HELM paper: temperature 1,
top-k 10, top-p 0.95, each sequence starting with ATG. Headers record the codon count and
whether the model ended the sequence (eos=yes) or it hit --max-codons (eos=no). Prints a
JSON summary; bad input exits with code 2. Transformers decode with a key / value cache,
LSTM and Mamba exports with their recurrent state (one position per token); a Hyena export
re-runs the whole prefix for every token (exact, but O(L^2): slow for long sequences).

  helm-scale generate EXPORT -n 100 -o generated.fasta [--seed 0]
"""
from __future__ import annotations

import argparse

from helm_scale.evaluate import cli


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_export(p, "export directory of a causal model (helm-scale export)")
    p.add_argument("-n", type=int, required=True, help="number of sequences")
    p.add_argument("-o", "--output", required=True, help="FASTA file to write")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (> 0; default 1)")
    p.add_argument("--top-k", type=int, default=10, help="keep the k most likely tokens (0: off; default 10)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass (1: off; default 0.95)")
    p.add_argument("--prefix", default="ATG", help="start of every sequence, whole codons (default ATG)")
    p.add_argument("--max-codons", type=int, default=None,
                   help="longest sequence in codons, prefix included (default: training data.seq_len - 2)")
    cli.add_seed(p, "the sampling")
    cli.add_batch_size(p, what="sequences sampled together")
    cli.add_runtime(p)


def _generate(args) -> dict:
    from helm_scale.evaluate.generation.sampling import generate_records
    from helm_scale.evaluate.sequences import write_fasta
    exported = cli.load_export(args.export, args.device)
    records = generate_records(exported, args.n, args.temperature, args.top_k, args.top_p, args.prefix,
                               args.max_codons, args.seed, args.batch_size, progress=not args.quiet)
    write_fasta(args.output, [(f"gen_{i} codons={r.codons} eos={'yes' if r.ended else 'no'}", r.sequence)
                              for i, r in enumerate(records)])
    return {"output": args.output, "n": len(records), "ended_with_eos": sum(r.ended for r in records),
            "mean_codons": sum(r.codons for r in records) / len(records), "seed": args.seed,
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "model_step": exported.step}


def run(args) -> int:
    return cli.run_command("helm-scale generate", _generate, args)
