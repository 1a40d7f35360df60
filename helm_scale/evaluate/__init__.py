"""Evaluation of exported models and the baselines they are compared with.

By concern, one sub-package each:

    lm/          language-model metrics: intrinsic (held-out loss, perplexity, accuracies),
                 sequence likelihoods and embeddings of raw sequences (scoring), mutation detection
    generation/  sampling (decoding: cached / recurrent or full forward) and generated-vs-real metrics
    baselines/   n-gram language models (Kneser-Ney, add-k)
    probes/      frozen-backbone probes: downstream property prediction, antibody region annotation
    sequences.py FASTA and shard input shared by all, tokenised by the project's tokenizer;
                 EvalInputError (bad input: exit 2, as helm_scale.tokenizer.SequenceError)
    cli.py       the command-line convention; eval_cmd.py routes ``helm-scale eval WHAT``

Function API (every name importable from ``helm_scale.evaluate``; modules load lazily):

    evaluate_intrinsic(exported, shard_dir, split="test", max_batches=None,
                       micro_batch_size=16, seq_len=None, progress=True) -> dict     lm/intrinsic.py
    sequence_nll(exported, seqs) -> (nll, nucleotides); embed(exported, seqs)         lm/scoring.py
    mutation_detection(score_fn, sequences, edits=(1, 5, 10), kinds=KINDS, seed=0) -> dict
    ngram_score_fn(lm), model_score_fn(exported) -> score_fn                         lm/mutation.py
    generate(exported, n, temperature=1.0, top_k=10, top_p=0.95, prefix="ATG",
             max_codons=None, seed=0, batch_size=16, progress=True) -> list[str]     generation/sampling.py
    generation_metrics(generated, reference, exported=None, max_pairs=1000,
                       max_embed=1000, seed=0) -> dict                               generation/metrics.py
    plot_codon_usage(generated, reference, path) -> Path                             generation/metrics.py
    NgramLM(order=5, level="nucleotide", smoothing="kneser-ney").fit(seqs)
        .perplexity(seqs) -> float, .score(seqs) -> (nll, nucleotides)               baselines/ngram.py
    read_sequences(path_or_shard_dir, split="test") -> list[str]                     sequences.py

``exported`` is what ``helm_scale.export.load_exported(path)`` returns. Commands:
``helm-scale eval {intrinsic,generation,mutation,ngram,downstream,annotate}`` and
``helm-scale generate``.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "evaluate_intrinsic": "lm.intrinsic",
    "sequence_nll": "lm.scoring", "embed": "lm.scoring",
    "mutation_detection": "lm.mutation", "mutate": "lm.mutation", "KINDS": "lm.mutation",
    "ngram_score_fn": "lm.mutation", "model_score_fn": "lm.mutation",
    "generate": "generation.sampling", "generate_records": "generation.sampling",
    "filter_logits": "generation.sampling",
    "generation_metrics": "generation.metrics", "plot_codon_usage": "generation.metrics",
    "frechet_distance": "generation.metrics", "diversity": "generation.metrics",
    "levenshtein": "generation.metrics", "is_valid_orf": "generation.metrics",
    "NgramLM": "baselines.ngram",
    "read_sequences": "sequences", "read_fasta": "sequences", "write_fasta": "sequences",
    "EvalInputError": "sequences",
}
__all__ = list(_WHERE)  # the lazily loaded names


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
