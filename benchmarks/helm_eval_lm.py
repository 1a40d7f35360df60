"""The language-model half of benchmarks/helm_eval.py: intrinsic metrics, generation, the
mutation task and the second seed's baselines, for every causal export beside n-gram LMs.

    write_cds_sets(corpus, out, n) -> Path the generation reference, and the real-vs-real floor
    lm_chains(helm, corpus, reference, exports, embedder, out, quick) -> {name: [(marker, cmd), ...]}
    collect(out, exports, runs) -> dict    every JSON the chains wrote, sizes and tokens trained
    lm_markdown(lm, labels) -> str         the results file's two tables

Every score runs on the prepared corpus's test split, and the n-grams are fitted on its
train split. The mutation task draws the same 500 sequences for every scorer, so its
per-nucleotide perplexity is the like-for-like one. The intrinsic per-nucleotide
perplexity cuts rows at the model's 256 positions, whereas the n-grams score whole
sequences. Generation starts every sequence with ATG, so it is compared with the test
split's coding sequences (those starting with ATG), not with the antibody chains the
corpus also holds: against the mixture, the Frechet distance measures the missing
antibodies (measured: 53 instead of 0.3 for XE's ancestral samples). Generated sequences
are embedded by one fixed model (the XE export), so the Frechet distance compares every
generator in the same space.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from helm_scale.evaluate.sequences import read_sequences, write_fasta
from helm_scale.models.registry import num_parameters
from helm_scale.train_config import load_train_config

NGRAMS = {"nucleotide 5-gram": ("nucleotide", 5), "nucleotide 8-gram": ("nucleotide", 8),
          "codon 3-gram": ("codon", 3)}
EDITS = (1, 5, 10)
# HELM's sampling (generate's defaults) and plain ancestral sampling: top-k / top-p cut the
# rare stop codons and <eos> away, so only the second shows whether a model ends its ORFs.
SAMPLINGS = {"top-k 10, top-p 0.95": ("", []), "ancestral": ("_ancestral", ["--top-k", "0", "--top-p", "1"])}


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def max_nt(exports: dict[str, Path]) -> int:
    """The longest real sequence every export can score after 10 insertions: one sequence set
    for every scorer in the mutation task."""
    positions = min(load_train_config(str(p / "config.yaml")).model.max_seq_len for p in exports.values())
    return 3 * (positions - 2) - max(EDITS)


def lm_chains(helm: list[str], corpus: Path, reference: Path, exports: dict[str, Path], embedder: Path,
              out: Path, quick: bool) -> dict[str, list[tuple[Path, list[str]]]]:
    """Per export: intrinsic, generate, generation metrics, mutation; then the n-grams' fit
    and mutation; then the real sample's generation metrics."""
    n_gen, n_mut = ("20", "30") if quick else ("200", "500")
    mutation = ["--data", str(corpus), "-n", n_mut, "--max-nt", str(max_nt(exports)), "--quiet"]
    generation = ["--reference", str(reference), "--model", str(embedder), "--quiet"]
    chains = {}
    for name, export in exports.items():
        d = out / name
        chains[name] = [(d / "intrinsic.json", [*helm, "eval", "intrinsic", str(export), "--data", str(corpus),
                                                "--split", "test", "-o", str(d / "intrinsic.json"), "--quiet"])]
        for suffix, options in SAMPLINGS.values():
            fasta, metrics = d / f"generated{suffix}.fasta", d / f"generation{suffix}.json"
            chains[name] += [
                (fasta, [*helm, "generate", str(export), "-n", n_gen, "--seed", "0", *options,
                         "-o", str(fasta), "--quiet"]),
                (metrics, [*helm, "eval", "generation", str(fasta), *generation, "-o", str(metrics)])]
        chains[name].append((d / "mutation.json", [*helm, "eval", "mutation", str(export), *mutation,
                                                   "-o", str(d / "mutation.json")]))
    d = out / "ngram"
    chains["ngram"] = [job for name, (level, order) in NGRAMS.items() for job in (
        (d / f"{_slug(name)}.json", [*helm, "eval", "ngram", "--data", str(corpus), "--level", level,
                                     "--order", str(order), "--save", str(d / f"{_slug(name)}.npz"),
                                     "-o", str(d / f"{_slug(name)}.json"), "--quiet"]),
        (d / f"{_slug(name)}.mutation.json", [*helm, "eval", "mutation", str(d / f"{_slug(name)}.npz"),
                                              *mutation, "-o", str(d / f"{_slug(name)}.mutation.json")]))]
    d = out / "real"
    chains["real"] = [(d / "generation.json", [*helm, "eval", "generation", str(d / "generated.fasta"),
                                               *generation, "-o", str(d / "generation.json")])]
    return chains


def write_cds_sets(corpus: Path, out: Path, n: int) -> Path:
    """The test split's coding sequences (ATG start) as the generation reference; and up to
    ``n`` seeded val-split ones as if generated: scored against the reference, they give each
    generation metric's value for real data (Frechet, JS and the rest are not 0 between two
    finite real samples)."""
    reference, real = out / "reference" / "test_cds.fasta", out / "real" / "generated.fasta"
    for path, split, cap in ((reference, "test", None), (real, "val", n)):
        if not path.exists():
            seqs = [s for s in read_sequences(corpus, split) if s.startswith("ATG")]
            if cap is not None and len(seqs) > cap:
                seqs = random.Random(0).sample(seqs, cap)
            write_fasta(path, [(f"{split}_{i}", s) for i, s in enumerate(seqs)])
    return reference


def trained_tokens(run_dir: Path) -> int | None:
    """Target tokens the run trained on: the sum of its logged windows, the last record per
    step counting (a resumed run logs some steps twice)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return int(sum({r["step"]: r["tokens"] for r in records if r.get("kind") == "train"}.values()))


def collect(out: Path, exports: dict[str, Path], runs: dict[str, Path]) -> dict:
    def load(path: Path):
        return json.loads(path.read_text()) if path.is_file() else None
    def ended(fasta: Path) -> float:
        headers = [line for line in fasta.read_text().splitlines() if line.startswith(">")]
        return sum("eos=yes" in h for h in headers) / max(len(headers), 1)
    models = {}
    for name, export in exports.items():
        d = out / name
        models[name] = {"intrinsic": load(d / "intrinsic.json"), "mutation": load(d / "mutation.json"),
                        "generation": {sampling: {**load(d / f"generation{suffix}.json"),
                                                  "ended_with_eos": ended(d / f"generated{suffix}.fasta")}
                                       for sampling, (suffix, _) in SAMPLINGS.items()},
                        "parameters": num_parameters(load_train_config(str(export / "config.yaml")).model),
                        "tokens_trained": trained_tokens(runs[name]) if name in runs else 0}
    ngrams = {name: {"perplexity": load(out / "ngram" / f"{_slug(name)}.json"),
                     "mutation": load(out / "ngram" / f"{_slug(name)}.mutation.json")} for name in NGRAMS}
    return {"models": models, "ngrams": ngrams, "real_sample": load(out / "real" / "generation.json")}


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _mutation_cells(m: dict | None) -> list[str]:
    """Perplexity of the real sequences; accuracy over every kind, and over the in-frame
    kinds (an insertion or deletion shifts a codon model's frame, so those are easy)."""
    if not m:
        return ["-", "-", "-"]
    by, acc = m["accuracy_by_edits"], m["accuracy"]
    in_frame = [(acc["substitute"][str(k)] + acc["swap"][str(k)]) / 2 for k in EDITS]
    return [f"{math.exp(m['mean_real_score']):.3f}", " / ".join(f"{by[str(k)]:.2f}" for k in EDITS),
            " / ".join(f"{a:.2f}" for a in in_frame)]


def lm_markdown(lm: dict, labels: dict[str, str]) -> str:
    """The intrinsic + baselines table and the generation table."""
    lines = ["# Language-model metrics and baselines (corpus test split)", "",
             ("| model | parameters | tokens trained | codon perplexity | codon acc | synonymous acc | "
             "per-nt perplexity, test split | per-nt perplexity, mutation set | mutation accuracy, 1 / 5 / 10 edits "
             "| substitutions and swaps only |"),
             "|---" * 10 + "|"]
    for name, m in lm["models"].items():
        i = m["intrinsic"] or {}
        lines.append(f"| {labels[name]} | {m['parameters']:,} | {m['tokens_trained']:,} | {_f(i.get('perplexity'), 2)} "
                     f"| {_f(i.get('codon_accuracy'))} | {_f(i.get('synonymous_accuracy'))} "
                     f"| {_f(i.get('per_nucleotide_perplexity'))} | " + " | ".join(_mutation_cells(m["mutation"])) + " |")
    for name, g in lm["ngrams"].items():
        p = g["perplexity"] or {}
        lines.append(f"| {name}, Kneser-Ney | - | train split | - | - | - "
                     f"| {_f(p.get('per_nucleotide_perplexity'))} | " + " | ".join(_mutation_cells(g["mutation"])) + " |")
    mut = next((m["mutation"] for m in lm["models"].values() if m["mutation"]), None) or {}
    cut = mut["max_nt"] + max(EDITS) if mut.get("max_nt") else "?"
    lines += ["", (f"Per-nucleotide perplexity, test split: the models' rows are cut at {cut} nt (their "
                   "positions) while the n-grams score whole sequences. "
                   f"Mutation set: the same {mut.get('n_sequences', '?')} test sequences of at most "
                   f"{mut.get('max_nt', '?')} nt for every scorer; its perplexity is exp(mean per-sequence "
                   "NLL per nucleotide) of the real sequences, and accuracy is choosing the real sequence over "
                   "a copy with 1 / 5 / 10 random insertions, deletions, substitutions or swaps (one copy each, "
                   "ties 1/2; 0.5 is chance). Insertions and deletions shift a codon model's reading frame, "
                   "which makes them easy: the last column leaves them out."), ""]

    lines += ["# Generation (CLM exports)", "",
              ("| source | sampling | GC | codon-usage JS | valid ORF | ended with eos | mean nt | diversity | "
               "Frechet | precision | recall |"), "|---" * 11 + "|"]
    rows = [(labels[n], sampling, g, g["ended_with_eos"])
            for sampling in SAMPLINGS for n, m in lm["models"].items() if (g := m["generation"][sampling])]
    if lm["real_sample"]:
        rows.append(("real (val sample)", "-", lm["real_sample"], None))
    for label, sampling, g, eos in rows:
        lines.append(f"| {label} | {sampling} | {_f(g['gc_content']['generated'])} | {_f(g['codon_usage_js_divergence'], 4)} "
                     f"| {_f(g['valid_orf_fraction']['generated'])} | {_f(eos, 2) if eos is not None else '-'} "
                     f"| {g['mean_length_nt']['generated']:.0f} | {_f(g['diversity']['generated'])} "
                     f"| {_f(g.get('frechet_distance'), 2)} | {_f(g.get('precision'), 2)} | {_f(g.get('recall'), 2)} |")
    real = lm["real_sample"]
    ref = real or (rows[0][2] if rows else None)
    if ref:
        lines += ["", (f"Reference: the test split's coding sequences ({ref['n_reference']}, ATG start): GC "
                       f"{ref['gc_content']['reference']:.3f}, valid ORF {ref['valid_orf_fraction']['reference']:.3f}, "
                       f"mean {ref['mean_length_nt']['reference']:.0f} nt, diversity {ref['diversity']['reference']:.3f}. "
                       f"Each model sampled {rows[0][2]['n_generated']} sequences per setting (temperature 1, prefix "
                       "ATG, at most 254 codons; a sequence cut there has no stop, so it is not a valid ORF). "
                       "Frechet distance and k-NN precision / recall (k 3) use the XE export's mean-pooled "
                       "embeddings for every source. `real (val sample)`: the val split's coding sequences "
                       f"({real['n_generated'] if real else '?'}) scored the same way, what a perfect generator "
                       "would get at about this sample size.")]
    return "\n".join(lines) + "\n"
