"""Metrics of generated sequences against real ones: GC, codon usage, ORFs, diversity, Frechet.

  helm-scale eval generation GENERATED.fasta --reference REAL.fasta[.gz]|SHARD_DIR [--model EXPORT]

GC content, codon-usage Jensen-Shannon divergence, valid-ORF fraction, diversity, and
with --model the Frechet distance and k-NN precision / recall in that export's embedding
space (helm_scale.evaluate.generation.metrics); draws a codon-usage plot (PNG). Prints
one JSON object.
"""
from __future__ import annotations

import argparse

from helm_scale.evaluate import cli


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("generated", help="FASTA of generated sequences (helm-scale generate)")
    p.add_argument("--reference", required=True, help="real sequences: FASTA(.gz) or a prepared dataset directory")
    cli.add_split(p, of="a dataset directory --reference")
    p.add_argument("--model", metavar="EXPORT",
                   help="export whose embeddings the Frechet distance and precision / recall use")
    p.add_argument("--max-pairs", type=int, default=1000, help="sequence pairs for diversity (default 1000)")
    p.add_argument("--max-embed", type=int, default=1000, help="sequences embedded per side (default 1000)")
    p.add_argument("--plot", help="codon-usage PNG (default: next to GENERATED, .codon_usage.png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the codon-usage plot")
    cli.add_seed(p, "the pair and embedding samples")
    cli.add_batch_size(p)
    cli.add_json_output(p)
    cli.add_runtime(p)


def _generation(args) -> dict:
    from pathlib import Path

    from helm_scale.evaluate.generation.metrics import generation_metrics, plot_codon_usage
    from helm_scale.evaluate.sequences import read_sequences
    generated = read_sequences(args.generated)
    reference = read_sequences(args.reference, args.split)
    exported = cli.load_export(args.model, args.device) if args.model else None
    out = generation_metrics(generated, reference, exported, args.max_pairs, args.max_embed, args.seed,
                             args.batch_size, progress=not args.quiet)
    out.update(generated_file=str(args.generated), reference=str(args.reference), model=args.model)
    if not args.no_plot:
        plot = args.plot or str(Path(args.generated).with_suffix("")) + ".codon_usage.png"
        out["plot"] = str(plot_codon_usage(generated, reference, plot))
    return out


def run(args) -> int:
    return cli.run_command("helm-scale eval generation", _generation, args)
