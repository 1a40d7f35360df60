"""The language-model half of benchmarks/helm_eval.py: intrinsic metrics, generation, the
mutation task and the second seed's baselines, for every causal export beside n-gram LMs.

    lm_chains(helm, corpus, exports, embedder, out, quick) -> {name: [(marker, cmd), ...]}
    write_real_sample(corpus, out, n)      the real-vs-real floor of the generation metrics
    collect(out, exports, runs) -> dict    every JSON the chains wrote, sizes and tokens trained
    lm_markdown(lm, labels) -> str         the results file's two tables

Every score runs on the prepared corpus's test split, and the n-grams are fitted on its
train split. The mutation task draws the same 500 sequences for every scorer, so its
per-nucleotide perplexity is the like-for-like one. The intrinsic per-nucleotide
perplexity cuts rows at the model's 256 positions, whereas the n-grams score whole
sequences. Generated sequences are embedded by one fixed model (the XE export), so the
Frechet distance compares every generator in the same space.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from helm_scale.evaluate.sequences import read_sequences, write_fasta
from helm_scale.train_config import load_train_config

NGRAMS = {"nucleotide 5-gram": ("nucleotide", 5), "nucleotide 8-gram": ("nucleotide", 8),
          "codon 3-gram": ("codon", 3)}
EDITS = (1, 5, 10)


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def max_nt(exports: dict[str, Path]) -> int:
    """The longest real sequence every export can score after 10 insertions: one sequence set
    for every scorer in the mutation task."""
    positions = min(load_train_config(str(p / "config.yaml")).model.max_seq_len for p in exports.values())
    return 3 * (positions - 2) - max(EDITS)


def lm_chains(helm: list[str], corpus: Path, exports: dict[str, Path], embedder: Path, out: Path,
              quick: bool) -> dict[str, list[tuple[Path, list[str]]]]:
    """Per export: intrinsic, generate, generation metrics, mutation; then the n-grams' fit
    and mutation; then the real sample's generation metrics."""
    n_gen, n_mut = ("20", "30") if quick else ("200", "500")
    mutation = ["--data", str(corpus), "-n", n_mut, "--max-nt", str(max_nt(exports)), "--quiet"]
    generation = ["--reference", str(corpus), "--split", "test", "--model", str(embedder), "--quiet"]
    chains = {}
    for name, export in exports.items():
        d = out / name
        chains[name] = [
            (d / "intrinsic.json", [*helm, "eval", "intrinsic", str(export), "--data", str(corpus),
                                    "--split", "test", "-o", str(d / "intrinsic.json"), "--quiet"]),
            (d / "generated.fasta", [*helm, "generate", str(export), "-n", n_gen, "--seed", "0",
                                     "-o", str(d / "generated.fasta"), "--quiet"]),
            (d / "generation.json", [*helm, "eval", "generation", str(d / "generated.fasta"), *generation,
                                     "-o", str(d / "generation.json")]),
            (d / "mutation.json", [*helm, "eval", "mutation", str(export), *mutation,
                                   "-o", str(d / "mutation.json")]),
        ]
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


def write_real_sample(corpus: Path, out: Path, n: int) -> Path:
    """``n`` seeded val-split sequences as if generated: scored against the test split, they
    give each generation metric's value for real data (Frechet, JS and the rest are not 0
    between two finite real samples)."""
    path = out / "real" / "generated.fasta"
    if not path.exists():
        seqs = read_sequences(corpus, "val")
        write_fasta(path, [(f"val_{i}", s) for i, s in enumerate(random.Random(0).sample(seqs, min(n, len(seqs))))])
    return path


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
    models = {}
    for name, export in exports.items():
        d = out / name
        fasta = (d / "generated.fasta").read_text().splitlines()
        headers = [line for line in fasta if line.startswith(">")]
        models[name] = {"intrinsic": load(d / "intrinsic.json"), "generation": load(d / "generation.json"),
                        "mutation": load(d / "mutation.json"),
                        "ended_with_eos": sum("eos=yes" in h for h in headers) / max(len(headers), 1),
                        "parameters": load_train_config(str(export / "config.yaml")).model.num_parameters(),
                        "tokens_trained": trained_tokens(runs[name]) if name in runs else 0}
    ngrams = {name: {"perplexity": load(out / "ngram" / f"{_slug(name)}.json"),
                     "mutation": load(out / "ngram" / f"{_slug(name)}.mutation.json")} for name in NGRAMS}
    return {"models": models, "ngrams": ngrams, "real_sample": load(out / "real" / "generation.json")}


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _mutation_cells(m: dict | None) -> list[str]:
    if not m:
        return ["-", "-"]
    by = m["accuracy_by_edits"]
    return [f"{math.exp(m['mean_real_score']):.3f}", " / ".join(f"{by[str(k)]:.2f}" for k in EDITS)]


def lm_markdown(lm: dict, labels: dict[str, str]) -> str:
    """The intrinsic + baselines table and the generation table."""
    lines = ["# Language-model metrics and baselines (corpus test split)", "",
             ("| model | parameters | tokens trained | codon perplexity | codon acc | synonymous acc | "
             "per-nt perplexity, test split | per-nt perplexity, mutation set | mutation accuracy, 1 / 5 / 10 edits |"),
             "|---" * 9 + "|"]
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
                   "ties 1/2; 0.5 is chance)."), ""]

    lines += ["# Generation (CLM exports)", "",
              ("| source | GC | codon-usage JS | valid ORF | ended with eos | mean nt | diversity | Frechet | "
              "precision | recall |"), "|---" * 10 + "|"]
    rows = [(labels[n], m["generation"], m["ended_with_eos"]) for n, m in lm["models"].items()]
    rows.append(("real (val sample)", lm["real_sample"], None))
    for label, g, eos in rows:
        if not g:
            continue
        lines.append(f"| {label} | {_f(g['gc_content']['generated'])} | {_f(g['codon_usage_js_divergence'], 4)} "
                     f"| {_f(g['valid_orf_fraction']['generated'])} | {_f(eos, 2) if eos is not None else '-'} "
                     f"| {g['mean_length_nt']['generated']:.0f} | {_f(g['diversity']['generated'])} "
                     f"| {_f(g.get('frechet_distance'), 2)} | {_f(g.get('precision'), 2)} | {_f(g.get('recall'), 2)} |")
    ref = lm["real_sample"] or next((m["generation"] for m in lm["models"].values() if m["generation"]), None)
    if ref:
        lines += ["", (f"Reference: the test split ({ref['n_reference']} sequences): GC "
                       f"{ref['gc_content']['reference']:.3f}, valid ORF {ref['valid_orf_fraction']['reference']:.3f}, "
                       f"mean {ref['mean_length_nt']['reference']:.0f} nt, diversity {ref['diversity']['reference']:.3f}. "
                       f"Each model sampled {ref['n_generated']} sequences (temperature 1, top-k 10, top-p 0.95, "
                       "prefix ATG, at most 254 codons; a sequence cut there has no stop, so it is not a valid ORF). "
                       "Frechet distance and k-NN precision / recall (k 3) use the XE export's mean-pooled "
                       "embeddings for every source. `real (val sample)` is as many val-split sequences scored "
                       "the same way: what a perfect generator would get with this sample size.")]
    return "\n".join(lines) + "\n"
