"""Evaluate exported models and baselines: intrinsic, generation, mutation, ngram, downstream, annotate.

  helm-scale eval intrinsic EXPORT --data SHARD_DIR         language-model metrics on held-out shards
  helm-scale eval mutation EXPORT_OR_NGRAM.npz --data ...   real sequences vs randomly edited copies
  helm-scale eval generation GENERATED.fasta --reference ...   generated vs real sequences
  helm-scale eval ngram --data SHARD_DIR                    an n-gram baseline's perplexity
  helm-scale eval downstream EXPORT TASKS... -o OUT         property prediction, frozen backbone
  helm-scale eval annotate EXPORT CSV                       antibody region annotation, frozen backbone

`helm-scale eval WHAT --help` for each. Options mean the same in every command (see
helm_scale/evaluate/cli.py); bad input exits with 2.
"""
from __future__ import annotations

import argparse
import importlib

# WHAT -> module with add_arguments(parser) and run(args) -> int; its docstring is the help.
# The modules are light: each imports torch and the rest inside run().
SUBCOMMANDS = {
    "intrinsic": "helm_scale.evaluate.lm.intrinsic_cmd",
    "generation": "helm_scale.evaluate.generation.metrics_cmd",
    "ngram": "helm_scale.evaluate.baselines.ngram_cmd",
    "mutation": "helm_scale.evaluate.lm.mutation_cmd",
    "downstream": "helm_scale.evaluate.probes.downstream",
    "annotate": "helm_scale.evaluate.probes.annotation",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        q = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(q)
        q.set_defaults(_run=module.run)


def run(args) -> int:
    return args._run(args)
