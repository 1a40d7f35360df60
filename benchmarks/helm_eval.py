"""HELM's evaluation, reproduced end to end on CPU: XE vs HXE head-to-head.

    prep corpus -> train XE and HXE (same model, data, budget) and the LSTM baseline ->
    export -> downstream table (four CodonBERT sets + E. coli protein abundance) ->
    antibody region annotation -> intrinsic metrics, generation and the mutation task for
    every export, beside n-gram baselines (benchmarks/helm_eval_lm.py)
    -> benchmarks/results/helm_eval_cpu.{json,md,png}

Every step is the public command line (recorded verbatim in the JSON and the Markdown);
a step whose output is already there is skipped unless --redo names it, so an
interrupted run resumes. The corpus is ../shared/data/corpus (antibody heavy chains +
natural CDS, --frame trim); the configs are configs/compare/{xe,hxe,lstm}.yaml.
``--backbones mamba hyena`` adds HELM's other backbones, each trained twice from
configs/compare/{mamba,hyena}.yaml: with XE, and with hxe.yaml's loss section (the HXE
side), then evaluated like the pair (downstream, annotation, language-model metrics).

Usage:
  python -m benchmarks.helm_eval                 # the full run (~30 min training, ~30 min eval)
  python -m benchmarks.helm_eval --random-baseline   # ... plus the untrained network for reference
  python -m benchmarks.helm_eval --backbones mamba hyena   # ... plus Mamba and Hyena, XE and HXE
  python -m benchmarks.helm_eval --quick         # a smoke test of the pipeline (minutes;
                                                 # writes helm_eval_quick.*, numbers meaningless)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.helm_eval_lm import (
    collect,
    lm_chains,
    lm_markdown,
    write_cds_sets,
)
from benchmarks.results_io import write_results
from helm_scale.evaluate.probes.report import (
    bar_chart,
    compare_annotation_markdown,
    compare_markdown,
)

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("xe", "hxe")
BASELINE = "lstm"  # trained and exported like the pair, scored by the language-model metrics only
BACKBONES = ("mamba", "hyena")  # --backbones: each trained with XE and with HXE, evaluated like the pair
HELM = [sys.executable, "-m", "helm_scale.cli"]
STEPS = ("prep", "train", "export", "downstream", "annotate", "lm")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Relative to the repository root (every command runs there), so the recorded commands
    # are the ones to type.
    p.add_argument("--data", default="../shared/data", help="the shared real data (default ../shared/data)")
    p.add_argument("--work", default="runs/compare", help="corpus, runs, exports, eval outputs (default runs/compare)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (torchrun)")
    p.add_argument("--seeds", type=int, default=3, help="probe seeds")
    p.add_argument("--quick", action="store_true", help="tiny budget everywhere: checks the pipeline only")
    p.add_argument("--redo", nargs="*", default=[], choices=STEPS, help="steps to run again")
    p.add_argument("--random-baseline", action="store_true",
                   help="also evaluate the same network untrained (seeded N(0, 0.02) weights): what pretraining adds")
    p.add_argument("--backbones", nargs="*", default=[], choices=BACKBONES,
                   help="also train and evaluate Mamba / Hyena (configs/compare/), with XE and with HXE")
    p.add_argument("--exports", nargs=2, metavar=("XE_DIR", "HXE_DIR"),
                   help="evaluate these exports instead of training XE and HXE (e.g. made elsewhere); "
                        "the corpus and the LSTM / n-gram baselines are still made here")
    return p.parse_args()


class Pipeline:
    def __init__(self, args):
        self.args, self.work, self.data = args, Path(args.work), Path(args.data)
        if args.quick:
            self.work = self.work.with_name(self.work.name + "_quick")
        self.commands: list[str] = []
        # Wall time per step, kept in the work dir so that a resumed run still reports the
        # steps an earlier invocation did.
        self.seconds_file = self.work / "seconds.json"
        self.seconds: dict[str, float] = (json.loads(self.seconds_file.read_text())
                                          if self.seconds_file.is_file() else {})

    def timed(self, step: str, seconds: float) -> None:
        self.seconds[step] = round(seconds, 1)
        self.seconds_file.parent.mkdir(parents=True, exist_ok=True)
        self.seconds_file.write_text(json.dumps(self.seconds, indent=1) + "\n")

    @staticmethod
    def _text(cmd: list[str]) -> str:
        return " ".join(shlex.quote(c) for c in cmd).replace(shlex.quote(sys.executable), "python")

    def step(self, step: str, cmd: list[str], marker: Path, remove: Path | None = None) -> None:
        """Run ``cmd`` unless ``marker`` (its finished output) exists; ``--redo STEP`` removes
        ``remove`` (default: the marker) first. Recorded either way, so the command list is
        complete after a resumed run; any failure ends the benchmark."""
        remove = remove or marker
        if step in self.args.redo and remove.exists():
            shutil.rmtree(remove) if remove.is_dir() else remove.unlink()
        text = self._text(cmd)
        self.commands.append(text)
        if marker.exists():
            print(f"[{step}] {marker} exists: skipped (--redo {step} to run it again)")
            return
        print(f"\n$ {text}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        self.timed(step, time.perf_counter() - t0)

    def corpus(self) -> Path:
        out = self.work / "corpus"
        self.step("prep", [*HELM, "prep", str(self.data / "corpus" / "antibody_heavy_chains.fasta.gz"),
                           str(self.data / "corpus" / "natural_cds.fasta.gz"), "--frame", "trim",
                           "-o", str(out), "--quiet"], out / "manifest.json", out)
        return out

    def train(self, name: str, corpus: Path, config: str | None = None, extra: list[str] = ()) -> Path:
        run_dir = self.work / "runs" / name
        config = config or f"configs/compare/{name}.yaml"
        overrides = [f"data.dataset_dir={corpus}", f"run.run_dir={run_dir}", "run.tensorboard=false", *extra]
        if self.args.quick:
            overrides += ["schedule.max_steps=20", "schedule.warmup_steps=2", "run.log_interval=5",
                          "run.eval_interval=0"]
        torchrun = ["torchrun"] if shutil.which("torchrun") else [sys.executable, "-m", "torch.distributed.run"]
        # A stopped run resumes from its last checkpoint when the same command runs again.
        self.step(f"train_{name}", [*torchrun, "--standalone", "--nproc-per-node", str(self.args.nproc),
                                    "-m", "helm_scale.cli", "train", config, *overrides],
                  run_dir / "summary.json", run_dir)
        return run_dir

    def export(self, name: str, run_dir: Path) -> Path:
        from helm_scale.cli import COMMANDS
        out = self.work / "exports" / name
        if "export" not in COMMANDS:
            sys.exit("helm-scale export is not on this branch yet: merge main once it lands "
                     "(the downstream table must use the trained, exported models)")
        self.step(f"export_{name}", [*HELM, "export", str(run_dir), "-o", str(out)], out)
        return out

    def random_export(self) -> Path:
        """The compare network with seeded random weights, never trained (N(0, 0.02) like the
        trainer's init; LayerNorms at 1 / 0), exported like the others."""
        from helm_scale.export import save_export
        from helm_scale.models.transformer import Transformer
        from helm_scale.train_config import load_train_config
        out = self.work / "exports" / "random"
        if "export" in self.args.redo and out.exists():
            shutil.rmtree(out)
        if not out.exists():
            cfg = load_train_config("configs/compare/xe.yaml")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = Transformer(cfg.model)
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if "norm" not in name:
                            p.normal_(0.0, 0.02) if p.dim() > 1 else p.zero_()
            save_export(out, model.state_dict(), cfg, step=0, source="random init, seed 0")
        return out

    def pending(self, step: str, jobs: list[tuple[Path, list[str]]]) -> list[list[str]]:
        """Record each job's command; return those whose output (marker) is missing, after
        ``--redo STEP`` removed it."""
        chain = []
        for marker, cmd in jobs:
            if step in self.args.redo and marker.exists():
                marker.unlink()
            self.commands.append(self._text(cmd))
            if marker.exists():
                print(f"[{step}] {marker} exists: skipped (--redo {step} to run it again)")
            else:
                chain.append(cmd)
        return chain

    def evaluate(self, exports: dict[str, Path]) -> tuple[dict, dict]:
        """Downstream then annotation per model; the models run side by side, one process
        and one thread each (two cores: measured faster than one process with two threads
        while other work shares the machine), each logging to eval/NAME/log.txt."""
        quick, seeds = self.args.quick, ["--seeds", "1" if self.args.quick else str(self.args.seeds)]
        chains = {}
        for name, export in exports.items():
            out = self.work / "eval" / name
            chain = self.pending("downstream", [(out / "downstream.json", [
                *HELM, "eval", "downstream", str(export), str(self.data / "downstream"), "-o", str(out),
                *seeds, "--threads", "1", *(["--max-epochs", "3"] if quick else [])])])
            chain += self.pending("annotate", [(out / "annotation.json", [
                *HELM, "eval", "annotate", str(export), str(self.data / "annotation" / "antibody_regions.csv"),
                "-o", str(out), *seeds, "--threads", "1",
                *(["--max-epochs", "3", "--limit", "300"] if quick else [])])])
            if chain:
                chains[name] = chain
        self.run_chains(chains, self.work / "eval", "eval_downstream_annotate_" + "+".join(chains))
        load = {name: self.work / "eval" / name for name in exports}
        return ({n: json.loads((d / "downstream.json").read_text()) for n, d in load.items()},
                {n: json.loads((d / "annotation.json").read_text()) for n, d in load.items()})

    def lm_metrics(self, corpus: Path, exports: dict[str, Path], runs: dict[str, Path]) -> dict:
        """Intrinsic, generation and mutation metrics per export plus the n-gram baselines
        (benchmarks/helm_eval_lm.py), one chain per model side by side, logging to lm/NAME/log.txt."""
        out = self.work / "lm"
        quick = self.args.quick
        reference = write_cds_sets(corpus, out, 20 if quick else 200)
        self.commands.append(f"# {reference} and {out / 'real' / 'generated.fasta'}: the test and val splits' "
                             "sequences starting with ATG, written by this script (helm_eval_lm.write_cds_sets)")
        jobs = lm_chains(HELM, corpus, reference, exports, exports["xe"], out, quick)
        chains = {name: chain for name, js in jobs.items() if (chain := self.pending("lm", js))}
        self.run_chains(chains, out, "lm_" + "+".join(chains))
        return collect(out, exports, runs)

    def run_chains(self, chains: dict[str, list[list[str]]], log_dir: Path, step: str) -> None:
        """Each chain's commands in order, the chains at once, one torch thread each; any
        failure ends the run."""
        if not chains:
            return
        t0 = time.perf_counter()
        procs = {}
        for name, chain in chains.items():
            log = log_dir / name / "log.txt"
            log.parent.mkdir(parents=True, exist_ok=True)
            script = " && ".join(" ".join(shlex.quote(a) for a in c) for c in chain)
            print(f"\n$ ({' && '.join(self._text(c) for c in chain)}) > {log} 2>&1 &", flush=True)
            procs[name] = (subprocess.Popen(["bash", "-c", script], stdout=log.open("a"), stderr=subprocess.STDOUT,
                                            env={**os.environ, "OMP_NUM_THREADS": "1"}), log)
        failed = [f"{name} (see {log})" for name, (proc, log) in procs.items() if proc.wait() != 0]
        self.timed(step, time.perf_counter() - t0)
        if failed:
            sys.exit("evaluation failed: " + ", ".join(failed))


def hxe_side() -> list[str]:
    """Overrides that turn an XE compare config into its HXE side: hxe.yaml's loss section
    where it differs from xe.yaml's."""
    from dataclasses import asdict

    from helm_scale.train_config import load_train_config
    xe, hxe = (asdict(load_train_config(f"configs/compare/{n}.yaml").loss) for n in MODELS)
    return [f"loss.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in hxe.items() if xe[key] != value]


def pretraining_markdown(train: dict, exports: dict, labels: dict[str, str]) -> str:
    """The pretraining side of the comparison, and what the untrained reference is."""
    lines = ["# Pretraining (same data, steps and rows per step)", "",
             "| model | steps | seconds | val perplexity | val codon acc | val synonymous acc |",
             "|---|---|---|---|---|---|"]
    for m, summary in train.items():
        ev = summary.get("eval") or {}
        lines.append(f"| {labels[m]} | {summary.get('steps')} | {summary.get('seconds', 0):.0f} | "
                     f"{ev.get('perplexity', float('nan')):.2f} | {ev.get('codon_accuracy', float('nan')):.3f} | "
                     f"{ev.get('synonymous_accuracy', float('nan')):.3f} |")
    lines += ["", ("Perplexity is the true codon cross-entropy on the val split for each. The corpus "
              "holds the CaLM E. coli CDS, so pretraining saw the abundance task's sequences "
              "(never its values).")]
    if "random" in exports:
        lines += ["", ("untrained: the same network with seeded N(0, 0.02) weights, never trained "
                  "(`--random-baseline`), through the same evaluation.")]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    os.chdir(ROOT)  # the relative paths (and the recorded commands) start at the repository root
    if not (Path(args.data) / "downstream").is_dir():
        sys.exit(f"{args.data}/downstream not found: this benchmark needs the shared real data (--data)")
    pipe = Pipeline(args)
    started = time.perf_counter()
    corpus = pipe.corpus()
    if args.exports:
        runs, exports = {}, dict(zip(MODELS, map(Path, args.exports)))
    else:
        runs = {m: pipe.train(m, corpus) for m in MODELS}
        exports = {m: pipe.export(m, runs[m]) for m in MODELS}
    if args.random_baseline:
        exports["random"] = pipe.random_export()
    runs[BASELINE] = pipe.train(BASELINE, corpus)
    baseline_export = pipe.export(BASELINE, runs[BASELINE])
    configs = {m: f"configs/compare/{m}.yaml" for m in (*MODELS, BASELINE)}
    for arch in args.backbones:
        for loss, extra in (("xe", []), ("hxe", hxe_side())):
            name = f"{arch}_{loss}"
            configs[name] = f"configs/compare/{arch}.yaml" + (" " + " ".join(extra) if extra else "")
            runs[name] = pipe.train(name, corpus, f"configs/compare/{arch}.yaml", extra)
            exports[name] = pipe.export(name, runs[name])
    downstream, annotation = pipe.evaluate(exports)
    lm = pipe.lm_metrics(corpus, {**exports, BASELINE: baseline_export}, runs)

    # A quick run checks the pipeline; its numbers mean nothing, so they stay in its work dir.
    stem = "helm_eval_quick" if args.quick else "helm_eval_cpu"
    results_dir = pipe.work if args.quick else Path("benchmarks/results")
    payload = {
        "benchmark": "helm_eval", "device": f"cpu ({os.cpu_count()} cores)", "torch": torch.__version__,
        "python": platform.python_version(), "quick": args.quick,
        "corpus": json.loads((corpus / "manifest.json").read_text()).get("totals"),
        "train": {m: json.loads((runs[m] / "summary.json").read_text()) for m in runs},
        "exports": {m: str(p) for m, p in {**exports, BASELINE: baseline_export}.items()},
        "configs": configs,
        "downstream": downstream, "annotation": annotation, "lm_metrics": lm,
        "commands": pipe.commands, "seconds": pipe.seconds,
        "total_seconds": round(time.perf_counter() - started, 1),
        "command": "python -m benchmarks.helm_eval" + (" --quick" if args.quick else "")
                   + (" --random-baseline" if args.random_baseline else "")
                   + (" --backbones " + " ".join(args.backbones) if args.backbones else ""),
    }
    write_results(results_dir / f"{stem}.json", payload)
    labels = {m: {"random": "untrained", BASELINE: "LSTM"}.get(m, m.upper()) for m in (*exports, BASELINE)}
    labels.update({f"{a}_{loss}": f"{a.capitalize()} {loss.upper()}" for a in args.backbones for loss in MODELS})
    md = [compare_markdown({labels[m]: downstream[m] for m in exports},
                           "HELM evaluation on CPU: XE vs HXE, downstream (frozen backbone)"),
          compare_annotation_markdown({labels[m]: annotation[m] for m in exports}),
          pretraining_markdown(payload["train"], exports, labels),
          lm_markdown(lm, labels),
          "# Commands\n\n```\n" + "\n".join(pipe.commands or ["(every step was already done)"]) + "\n```\n"]
    (results_dir / f"{stem}.md").write_text("\n".join(md))
    bar_chart({labels[m]: downstream[m] for m in exports}, results_dir / f"{stem}.png",
              "Downstream Spearman rho: XE vs HXE pretraining")
    print(f"wrote {results_dir / (stem + '.md')} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
