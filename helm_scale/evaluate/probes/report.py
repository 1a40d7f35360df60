"""Tables (Markdown + JSON) and bar charts (PNG) for the downstream and annotation results,
for one model or side by side for several (the XE vs HXE head-to-head)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(mean, std) -> str:
    return f"{_fmt(mean)} ± {_fmt(std)}"


def _model_line(report: dict) -> str:
    b = report.get("backbone", {})
    return (f"model `{report.get('model')}`: {b.get('layers')} layers x {b.get('hidden')} hidden, "
            f"{b.get('objective')} / {b.get('loss')}, step {b.get('step')}")


def downstream_markdown(report: dict) -> str:
    seeds = report.get("settings", {}).get("seeds")
    lines = ["# Downstream property prediction (frozen backbone)", "", _model_line(report), "",
             (f"Spearman rho on the test split. TextCNN: mean ± std over {seeds} seeds; "
              "ridge: mean-pooled states, alpha chosen on val."), "",
             "| task | train / val / test | split | target | cut | TextCNN rho | ridge rho |",
             "|---|---|---|---|---|---|---|"]
    for t in report["tasks"]:
        s = t["sizes"]
        cnn = _pm(t["textcnn"]["mean"], t["textcnn"]["std"]) if "textcnn" in t else "-"
        ridge = _fmt(t["ridge"]["rho"]) if "ridge" in t else "-"
        lines.append(f"| {t['task']} | {s['train']} / {s['val']} / {s['test']} | {t['split_source']} "
                     f"| {t['target']} | {t['truncated']} | {cnn} | {ridge} |")
    return "\n".join(lines) + "\n"


def _task_scores(report: dict, probe: str) -> dict[str, tuple[float, float]]:
    out = {}
    for t in report["tasks"]:
        if probe == "textcnn" and "textcnn" in t:
            out[t["task"]] = (t["textcnn"]["mean"], t["textcnn"]["std"])
        elif probe == "ridge" and "ridge" in t:
            out[t["task"]] = (t["ridge"]["rho"], 0.0)
    return out


def compare_markdown(reports: dict[str, dict], title: str = "Downstream: head-to-head") -> str:
    """One row per task, a TextCNN and a ridge column per model, then the mean over tasks
    (tasks every model has)."""
    labels = list(reports)
    tasks = list(dict.fromkeys(t["task"] for r in reports.values() for t in r["tasks"]))
    scores = {(lab, probe): _task_scores(reports[lab], probe) for lab in labels
              for probe in ("textcnn", "ridge")}
    head = [f"{lab} TextCNN" for lab in labels] + [f"{lab} ridge" for lab in labels]
    lines = [f"# {title}", "", *[f"- {lab}: {_model_line(reports[lab])}" for lab in labels], "",
             "Spearman rho on the test split (TextCNN: mean ± std over seeds).", "",
             "| task | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for task in tasks:
        cells = [_pm(*scores[(lab, "textcnn")][task]) if task in scores[(lab, "textcnn")] else "-"
                 for lab in labels]
        cells += [_fmt(scores[(lab, "ridge")][task][0]) if task in scores[(lab, "ridge")] else "-"
                  for lab in labels]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    means = []
    for probe in ("textcnn", "ridge"):
        common = set.intersection(*(set(scores[(lab, probe)]) for lab in labels)) if labels else set()
        means += [_fmt(np.mean([scores[(lab, probe)][t][0] for t in common])) if common else "-"
                  for lab in labels]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(reports: dict[str, dict], path, title: str) -> bool:
    """Grouped bars per task: TextCNN (error bar = std over seeds) and ridge for each model.
    Returns False (with a note) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only; no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no chart: matplotlib is not installed (pip install 'helm-scale[eval]')",
              file=sys.stderr)
        return False
    tasks = list(dict.fromkeys(t["task"] for r in reports.values() for t in r["tasks"]))
    # Models side by side within each probe: the comparison the chart is for.
    series = [(f"{lab} {probe}" if len(reports) > 1 else probe, _task_scores(r, probe))
              for probe in ("textcnn", "ridge") for lab, r in reports.items()]
    series = [(name, s) for name, s in series if s]
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 2.0 + 0.4 * len(tasks) * len(series))), 4.5))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(tasks))
    for i, (name, s) in enumerate(series):
        vals = [s.get(t, (np.nan, 0.0)) for t in tasks]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [v[0] for v in vals], width,
               yerr=[v[1] for v in vals], capsize=3, label=name)
    ax.set_xticks(x, tasks, rotation=20, ha="right")
    ax.set_ylabel("Spearman rho (test)")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title(title, pad=34)
    ax.legend(fontsize=8, ncol=len(series), loc="lower center", bbox_to_anchor=(0.5, 1.06), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_downstream_report(report: dict, out_dir, stem: str = "downstream") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(downstream_markdown(report))
    bar_chart({"model": report}, out / f"{stem}.png", "Downstream (frozen backbone)")


def annotation_markdown(report: dict) -> str:
    lines = ["# Antibody region annotation (frozen backbone)", "", _model_line(report), "",
             (f"Per-codon IMGT region ({report['label_rule']}); {report['sizes']} sequences "
              f"(train / val / test, {report['split_source']}); mean ± std over "
              f"{len(report['seeds'])} seeds."), "",
             "| head | token accuracy | macro F1 | best epochs |", "|---|---|---|---|"]
    for h in report["heads"]:
        lines.append(f"| {h['head']} | {_pm(h['accuracy_mean'], h['accuracy_std'])} | "
                     f"{_pm(h['macro_f1_mean'], h['macro_f1_std'])} | {h['best_epochs']} |")
    return "\n".join(lines) + "\n"


def write_annotation_report(report: dict, out_dir, stem: str = "annotation") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(annotation_markdown(report))


def compare_annotation_markdown(reports: dict[str, dict]) -> str:
    """One row per head, token accuracy and macro F1 (mean ± std over seeds) per model."""
    labels = list(reports)
    heads = list(dict.fromkeys(h["head"] for r in reports.values() for h in r["heads"]))
    cols = [f"{lab} accuracy" for lab in labels] + [f"{lab} macro F1" for lab in labels]
    first = next(iter(reports.values()))
    lines = ["# Antibody region annotation: head-to-head", "",
             (f"Per-codon IMGT region ({first['label_rule']}); sequences train / val / test "
              f"{first['sizes']}, {first['split_source']}."), "",
             "| head | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for head in heads:
        found = {lab: next((h for h in reports[lab]["heads"] if h["head"] == head), None) for lab in labels}
        cells = [_pm(f["accuracy_mean"], f["accuracy_std"]) if f else "-" for f in found.values()]
        cells += [_pm(f["macro_f1_mean"], f["macro_f1_std"]) if f else "-" for f in found.values()]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
