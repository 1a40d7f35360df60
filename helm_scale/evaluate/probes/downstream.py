"""Downstream property prediction with a frozen backbone (HELM's protocol).

For every task (a CSV, or every *.csv under a directory): embed all sequences once with
the exported model, then fit a TextCNN head on the last hidden states (kernels 3/4/5, 100
channels each, max-pool over time, MSE, Adam, early stopping on validation loss) for
several seeds, and a ridge probe on mean-pooled states (closed form, alpha chosen on
validation). Score: Spearman rho on the test split. Writes OUT/downstream.{json,md,png}.

Columns are detected (sequence: Sequence / CDS / cds / sequence; value: Value / value /
abundance / label; split: Split / split) unless named; without a split column the rows
get a seeded 80/10/10 split. Targets are z-scored on the training rows; with
``--target auto`` a non-negative, strongly right-skewed target (skewness > 2, e.g.
protein abundance) is fitted as log(1 + y). Spearman rho is unchanged by either.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from helm_scale.evaluate import cli
from helm_scale.evaluate.probes.tasks import Task, find_task_files, read_task
from helm_scale.evaluate.sequences import EvalInputError

OUTPUT_STEM = "downstream"


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_export(p)
    p.add_argument("inputs", nargs="+", help="task CSV files and/or directories of them")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per embedding batch (default 16384)")
    g = p.add_argument_group("input columns (default: detected)")
    g.add_argument("--sequence-column", help="default: detected (Sequence, CDS, cds, sequence, ...)")
    g.add_argument("--value-column", help="default: detected (Value, value, abundance, label, ...)")
    g.add_argument("--split-column", help="default: detected (Split, split, set, fold_split)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 split (default 0)")
    g.add_argument("--target", choices=("auto", "raw", "log"), default="auto",
                   help="fit y or log(1 + y) (default auto: log for skewed non-negative targets)")
    g.add_argument("--max-len", type=int, help="cut sequences to this many tokens (default: the model's)")
    h = cli.add_head_training(p, lr=1e-3, max_epochs=30)
    h.add_argument("--probes", default="textcnn,ridge", help="comma list of textcnn, ridge (default both)")
    h.add_argument("--channels", type=int, default=100, help="TextCNN channels per kernel (default 100)")
    h.add_argument("--dropout", type=float, default=0.5, help="TextCNN dropout (default 0.5)")
    cli.add_runtime(p)


def skewness(x: np.ndarray) -> float:
    sd = x.std()
    return float(np.mean((x - x.mean()) ** 3) / sd ** 3) if sd > 0 else 0.0


def fit_targets(values: np.ndarray, train_idx: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """Targets for fitting: optional log(1 + y), then z-scored with the training rows."""
    if mode == "log" and values.min() <= -1:
        raise EvalInputError("--target log needs every value > -1")
    use_log = mode == "log" or (mode == "auto" and values.min() >= 0
                                and skewness(values[train_idx]) > 2.0)
    y = np.log1p(values) if use_log else values.astype(np.float64)
    mu, sd = y[train_idx].mean(), y[train_idx].std()
    return (y - mu) / (sd if sd > 0 else 1.0), ("log1p, z-scored" if use_log else "z-scored")


def evaluate_task(backbone, task: Task, args) -> dict:
    """Embed once, then every probe and seed on the same features."""
    from helm_scale.evaluate.probes.heads import (
        FitSpec,
        fit_ridge,
        predict_textcnn,
        train_textcnn,
    )
    from helm_scale.evaluate.probes.scores import mean_std, spearman

    probes = parse_probes(args.probes)
    tok = backbone.tokenise(task.sequences, args.max_len)
    if tok.truncated:
        print(f"  warning: {tok.truncated} of {len(task.sequences)} sequences cut to "
              f"{min(args.max_len or backbone.max_len, backbone.max_len)} tokens", file=sys.stderr)
    started = time.perf_counter()
    feats = backbone.features(tok.ids, desc=None if args.quiet else f"embed {task.name}")
    result = {"task": task.name, "path": task.path, "columns": task.columns,
              "split_source": task.split_source, "sizes": task.split_sizes(), "notes": task.notes,
              "truncated": tok.truncated, "unknown_codons": tok.unknown_codons,
              "embed_seconds": round(time.perf_counter() - started, 2)}
    tr, va, te = (task.indices(s) for s in ("train", "val", "test"))
    y, result["target"] = fit_targets(task.values, tr, args.target)
    truth = task.values[te]
    if "ridge" in probes:
        t0 = time.perf_counter()
        ridge = fit_ridge(feats.pooled[tr], y[tr], feats.pooled[va], y[va])
        result["ridge"] = {"rho": spearman(ridge.predict(feats.pooled[te]), truth),
                           "val_rho": spearman(ridge.predict(feats.pooled[va]), y[va]),
                           "alpha": ridge.alpha, "seconds": round(time.perf_counter() - t0, 2)}
    if "textcnn" in probes:
        spec = FitSpec(lr=args.lr, batch_size=args.batch_size, max_epochs=args.max_epochs,
                       patience=args.patience)
        rhos, epochs, t0 = [], [], time.perf_counter()
        for seed in range(args.seeds):
            model, info = train_textcnn(feats.tokens, feats.lengths, y, tr, va, spec, seed,
                                        channels=args.channels, dropout=args.dropout,
                                        desc=None if args.quiet else f"TextCNN {task.name} seed {seed}")
            rhos.append(spearman(predict_textcnn(model, feats.tokens, feats.lengths, te), truth))
            epochs.append(info["best_epoch"])
        mean, std = mean_std(rhos)
        result["textcnn"] = {"rho": rhos, "mean": mean, "std": std, "seeds": list(range(args.seeds)),
                             "best_epochs": epochs, "seconds": round(time.perf_counter() - t0, 2)}
    del feats  # the features are the big allocation: let them go before the next task
    return result


def parse_probes(text: str) -> set[str]:
    probes = {p.strip() for p in text.split(",") if p.strip()}
    if not probes or probes - {"textcnn", "ridge"}:
        raise EvalInputError(f"--probes {text!r}: choose from textcnn, ridge")
    return probes


def run(args) -> int:
    return cli.run_command("helm-scale eval downstream", _downstream, args)


def _downstream(args) -> int:
    from helm_scale.evaluate.probes.backbone import Backbone
    from helm_scale.evaluate.probes.report import write_downstream_report

    if args.seeds < 1:
        raise EvalInputError("--seeds must be at least 1")
    parse_probes(args.probes)
    files = find_task_files(args.inputs)
    # Every file is read and checked before the (slow) model work starts.
    tasks = [read_task(f, args.sequence_column, args.value_column, args.split_column,
                       args.split_seed) for f in files]
    if len({t.name for t in tasks}) != len(tasks):
        raise EvalInputError("two task files share a name: " + ", ".join(t.path for t in tasks))
    backbone = Backbone(cli.load_export(args.export, args.device), args.batch_tokens)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": str(args.export), "backbone": backbone.describe(),
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
              "tasks": []}
    for task in tasks:
        print(f"{task.name}: {len(task.sequences)} rows {task.split_sizes()} ({task.split_source})")
        try:
            res = evaluate_task(backbone, task, args)
        except EvalInputError as e:
            raise EvalInputError(f"{task.path}: {e}") from None
        report["tasks"].append(res)
        print("  " + summary_line(res))
        # Written after every task: a long run stopped midway keeps what it finished.
        write_downstream_report(report, out, OUTPUT_STEM)
    print(f"wrote {out / (OUTPUT_STEM + '.md')}, .json and .png")
    return 0


def summary_line(res: dict) -> str:
    parts = []
    if "textcnn" in res:
        t = res["textcnn"]
        parts.append(f"TextCNN rho {t['mean']:.3f} ± {t['std']:.3f} ({len(t['rho'])} seeds, {t['seconds']:.0f} s)")
    if "ridge" in res:
        parts.append(f"ridge rho {res['ridge']['rho']:.3f} (alpha {res['ridge']['alpha']:g})")
    return "; ".join(parts)
