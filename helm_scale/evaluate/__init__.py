"""Evaluation of exported models and the baselines they are compared with (issue 8).

Function API (every name importable from ``helm_scale.evaluate``; modules load lazily):

    evaluate_intrinsic(exported, shard_dir, split="test", max_batches=None,
                       micro_batch_size=16, seq_len=None, progress=True) -> dict     intrinsic.py
    generate(exported, n, temperature=1.0, top_k=10, top_p=0.95, prefix="ATG",
             max_codons=None, seed=0, batch_size=16, progress=True) -> list[str]     sampling.py
    generation_metrics(generated, reference, exported=None, max_pairs=1000,
                       max_embed=1000, seed=0) -> dict                               metrics.py
    plot_codon_usage(generated, reference, path) -> Path                             metrics.py
    NgramLM(order=5, level="nucleotide", smoothing="kneser-ney").fit(seqs)
        .perplexity(seqs) -> float, .score(seqs) -> (nll, nucleotides)               ngram.py
    mutation_detection(score_fn, sequences, edits=(1, 5, 10), kinds=KINDS, seed=0) -> dict
    ngram_score_fn(lm), model_score_fn(exported) -> score_fn                         mutation.py
    sequence_nll(exported, seqs) -> (nll, nucleotides); embed(exported, seqs)         scoring.py
    read_sequences(path_or_shard_dir, split="test") -> list[str]                     sequences.py

``exported`` is what ``helm_scale.export.load_exported(path)`` returns. Commands:
``helm-scale eval {intrinsic,generation,mutation,ngram,downstream,annotate}`` and
``helm-scale generate``. Downstream property prediction (TextCNN and ridge probes) lives
in downstream.py / probes.py / report.py, antibody region annotation in annotation.py.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "evaluate_intrinsic": "intrinsic",
    "generate": "sampling", "generate_records": "sampling", "filter_logits": "sampling",
    "generation_metrics": "metrics", "plot_codon_usage": "metrics", "frechet_distance": "metrics",
    "diversity": "metrics", "levenshtein": "metrics", "is_valid_orf": "metrics",
    "NgramLM": "ngram",
    "mutation_detection": "mutation", "mutate": "mutation", "KINDS": "mutation",
    "ngram_score_fn": "mutation", "model_score_fn": "mutation",
    "sequence_nll": "scoring", "embed": "scoring",
    "read_sequences": "sequences", "read_fasta": "sequences", "write_fasta": "sequences",
    "EvalInputError": "sequences",
}
__all__ = list(_WHERE)  # the lazily loaded names


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
