"""Antibody region annotation with a frozen backbone: one IMGT region per codon.

Input: a CSV with a nucleotide sequence column and a per-nucleotide label string of the
same length (gaps and whitespace, which the tokenizer drops, are no nucleotides;
``annotation/antibody_regions.csv``: 0 FR1, 1 CDR1, 2 FR2, 3 CDR2, 4 FR3, 5 CDR3, 6 FR4). Codons are read in frame from the first base; a codon's label is the
majority of its three nucleotides' labels (all three different: the first nucleotide's),
or with ``--label-rule first`` always the first nucleotide's. The model's last hidden
state of each codon feeds a per-token head (``linear``, or ``conv``: width 5, 64
channels), trained with cross-entropy on a seeded 80/10/10 split of the sequences with
early stopping on validation loss. Scores on the test split: token accuracy and macro F1.
Writes OUT/annotation.{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from helm_scale.evaluate import cli
from helm_scale.evaluate.probes.tasks import pick_column, seeded_split
from helm_scale.evaluate.sequences import EvalInputError
from helm_scale.tokenizer import normalise

LABEL_COLUMNS = ("region_labels_nt", "region_labels", "labels", "label")
SEQUENCE_COLUMNS = ("sequence", "Sequence", "sequence_alignment", "seq", "cds")
IMGT_REGIONS = {"0": "FR1", "1": "CDR1", "2": "FR2", "3": "CDR2", "4": "FR3", "5": "CDR3", "6": "FR4"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_export(p)
    p.add_argument("csv", help="CSV with a sequence and a per-nucleotide label column")
    p.add_argument("-o", "--output", default="eval/annotation", help="output directory (default eval/annotation)")
    p.add_argument("--sequence-column", help="default: detected (sequence, Sequence, ...)")
    p.add_argument("--label-column", help="default: detected (region_labels_nt, labels, ...)")
    p.add_argument("--label-rule", choices=("majority", "first"), default="majority",
                   help="a codon's label from its nucleotides' (default majority)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 split (default 0)")
    p.add_argument("--limit", type=int, help="use only the first N sequences (quick runs)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per embedding batch (default 16384)")
    # A linear probe on ~150k training codons converges slowly at 1e-3 (still improving at
    # epoch 50, measured); at 1e-2 it stops early by epoch ~50 at the same accuracy.
    h = cli.add_head_training(p, lr=1e-2, max_epochs=100)
    h.add_argument("--heads", default="linear,conv", help="comma list of linear, conv (default both)")
    cli.add_runtime(p)


def codon_labels(labels: str, rule: str) -> list[str]:
    """One label per complete codon (trailing nucleotides dropped)."""
    out = []
    for i in range(0, len(labels) - len(labels) % 3, 3):
        a, b, c = labels[i:i + 3]
        # With three votes a majority exists unless all differ; then the first base decides.
        out.append(b if rule == "majority" and b == c and a != b else a)
    return out


def read_annotation(path, sequence_column=None, label_column=None, limit=None):
    """(sequences, per-nucleotide label strings, column names) with every row checked."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise EvalInputError(f"{path}: empty file (no header line)")
        seq_col = pick_column(header, sequence_column, SEQUENCE_COLUMNS, "sequence", path, "--sequence-column")
        lab_col = pick_column(header, label_column, LABEL_COLUMNS, "label", path, "--label-column")
        si, li = header.index(seq_col), header.index(lab_col)
        sequences, labels = [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise EvalInputError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
            seq, lab = row[si].strip(), row[li].strip()
            nucleotides = len(normalise(seq.encode("ascii", "replace")))  # as the tokenizer reads them
            if nucleotides != len(lab):
                raise EvalInputError(f"{path}:{line}: sequence has {nucleotides} nucleotides but "
                                 f"{len(lab)} labels")
            if len(seq) < 3:
                raise EvalInputError(f"{path}:{line}: sequence shorter than one codon")
            sequences.append(seq)
            labels.append(lab)
            if limit and len(sequences) >= limit:
                break
    if len(sequences) < 10:
        raise EvalInputError(f"{path}: {len(sequences)} usable rows; annotation needs at least 10")
    return sequences, labels, {"sequence": seq_col, "label": lab_col}


def label_matrix(tokenised_ids, label_strings, rule: str, classes: list[str]):
    """[N, L] int64 class per token: codon positions 1..n get their codon's class, the
    specials, padding and codons cut by the length limit get -100. Returns (matrix, cut)."""
    import torch
    width = max(len(t) for t in tokenised_ids)
    out = torch.full((len(tokenised_ids), width), -100, dtype=torch.long)
    index, cut = {c: i for i, c in enumerate(classes)}, 0
    for r, (ids, labs) in enumerate(zip(tokenised_ids, label_strings)):
        per_codon = codon_labels(labs, rule)
        kept = min(len(per_codon), len(ids) - 1)  # position 0 is <cls>
        cut += len(per_codon) - kept
        out[r, 1:kept + 1] = torch.tensor([index[c] for c in per_codon[:kept]])
    return out, cut


def run(args) -> int:
    return cli.run_command("helm-scale eval annotate", _annotate, args)


def _annotate(args) -> int:
    import torch

    from helm_scale.evaluate.probes.backbone import Backbone
    from helm_scale.evaluate.probes.heads import (
        FitSpec,
        TokenHead,
        predict_tokens,
        train_token_head,
    )
    from helm_scale.evaluate.probes.report import write_annotation_report
    from helm_scale.evaluate.probes.scores import accuracy, macro_f1, mean_std, per_class_f1

    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    if not heads or set(heads) - set(TokenHead.KINDS):
        raise EvalInputError(f"--heads {args.heads!r}: choose from {', '.join(TokenHead.KINDS)}")
    if args.seeds < 1:
        raise EvalInputError("--seeds must be at least 1")
    sequences, label_strings, columns = read_annotation(args.csv, args.sequence_column, args.label_column,
                                                        args.limit)
    backbone = Backbone(cli.load_export(args.export, args.device), args.batch_tokens)
    # Classes as codons see them: a label that only ever loses the vote is no class.
    classes = sorted({c for labs in label_strings for c in codon_labels(labs, args.label_rule)})
    tok = backbone.tokenise(sequences)
    labels, cut = label_matrix(tok.ids, label_strings, args.label_rule, classes)
    if tok.truncated:
        print(f"warning: {tok.truncated} sequences cut to {backbone.max_len} tokens "
              f"({cut} codon labels dropped)", file=sys.stderr)
    split = seeded_split(len(sequences), args.split_seed)
    tr, va, te = (np.flatnonzero(split == i) for i in range(3))
    t0 = time.perf_counter()
    feats = backbone.features(tok.ids, desc=None if args.quiet else "embed annotation")
    embed_seconds = time.perf_counter() - t0
    spec = FitSpec(lr=args.lr, batch_size=args.batch_size, max_epochs=args.max_epochs,
                   patience=args.patience)
    results = []
    for kind in heads:
        accs, f1s, epochs, per_class, t0 = [], [], [], [], time.perf_counter()
        for seed in range(args.seeds):
            head, info = train_token_head(feats.tokens, feats.lengths, labels, len(classes), tr, va,
                                          spec, seed, kind, desc=None if args.quiet else f"{kind} head seed {seed}")
            preds = predict_tokens(head, feats.tokens, feats.lengths, te)
            true = torch.cat([labels[i, : len(p)] for i, p in zip(te, preds)])
            pred = torch.cat(preds)
            keep = true != -100
            true, pred = true[keep].numpy(), pred[keep].numpy()
            accs.append(accuracy(true, pred))
            f1s.append(macro_f1(true, pred))  # over the classes in the test truth or predictions
            per_class.append(per_class_f1(true, pred))
            epochs.append(info["best_epoch"])
        (am, asd), (fm, fsd) = mean_std(accs), mean_std(f1s)
        results.append({"head": kind, "accuracy": accs, "macro_f1": f1s, "accuracy_mean": am,
                        "accuracy_std": asd, "macro_f1_mean": fm, "macro_f1_std": fsd,
                        "per_class_f1": {_region(classes[c]): float(np.mean([p[c] for p in per_class if c in p]))
                                         for c in range(len(classes)) if any(c in p for p in per_class)},
                        "best_epochs": epochs, "seconds": round(time.perf_counter() - t0, 2)})
        print(f"{kind}: token accuracy {am:.3f} ± {asd:.3f}, macro F1 {fm:.3f} ± {fsd:.3f}")
    report = {"model": str(args.export), "backbone": backbone.describe(), "csv": str(args.csv),
              "columns": columns, "label_rule": _rule_text(args.label_rule),
              "classes": [_region(c) for c in classes], "sizes": [len(tr), len(va), len(te)],
              "split_source": f"seeded 80/10/10 (split seed {args.split_seed})",
              "seeds": list(range(args.seeds)), "truncated": tok.truncated, "cut_codon_labels": cut,
              "test_codons": int(sum((labels[i] != -100).sum() for i in te)),
              "embed_seconds": round(embed_seconds, 2), "heads": results,
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
    write_annotation_report(report, args.output)
    print(f"wrote {Path(args.output) / 'annotation.md'} and .json")
    return 0


def _region(c: str) -> str:
    return IMGT_REGIONS.get(c, c)


def _rule_text(rule: str) -> str:
    return ("majority label of the codon's 3 nucleotides; all 3 different: the first's"
            if rule == "majority" else "label of the codon's first nucleotide")
