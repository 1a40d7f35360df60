"""Export a checkpoint as consolidated weights anyone can load on one device.

``helm-scale export RUN [--step N] [-o DIR]`` turns a training checkpoint (any backend,
DP or TP layout) into a directory that loads with no process group, megatron-core or
DeepSpeed, and nothing unpickled:

    model.safetensors   full fp32 weights, named as the single-device network of
                        helm_scale.models.registry.build_model (the TP model's gathered names)
    config.yaml         the resolved training configuration
    vocab.json          the codon vocabulary (token order is the embedding row order)
    tree.json           the codon tree the loss used
    export.json         format, step, source checkpoint, sha256 of every file above

    export_run(run_dir, step=None, out=None) -> Path
    save_export(out_dir, state_dict, train_config, step, source="") -> Path
    load_exported(path, device="cpu") -> Exported(model, config, vocab, tree, step)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from helm_scale.checkpoint.store import CheckpointStore
from helm_scale.codon import CodonTree, Vocabulary, build_tree
from helm_scale.durable import sha256_file, staged_dir

FORMAT = "helm-scale-export/1"
EXPORT_FILES = ("model.safetensors", "config.yaml", "vocab.json", "tree.json")


@dataclass
class Exported:
    model: torch.nn.Module  # models.registry.build_model(config.model), eval mode
    config: object          # TrainConfig
    vocab: Vocabulary
    tree: CodonTree
    step: int


def save_export(out_dir, state_dict: dict[str, torch.Tensor], train_config, step: int,
                source: str = "") -> Path:
    """Write an export atomically (a temporary sibling directory renamed into place)."""
    from safetensors.torch import save_file

    from helm_scale.config_io import save_config
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another -o")
    with staged_dir(out) as tmp:
        vocab = Vocabulary.default()
        tree = build_tree(vocab, train_config.loss.tree, train_config.loss.tree_seed)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()},
                  tmp / "model.safetensors", metadata={"format": FORMAT, "step": str(step)})
        save_config(train_config, tmp / "config.yaml")
        (tmp / "vocab.json").write_text(json.dumps(vocab.to_dict(), indent=1) + "\n")
        (tmp / "tree.json").write_text(json.dumps(tree.to_dict()) + "\n")
        meta = {"format": FORMAT, "step": step, "source": source,
                "vocab_fingerprint": vocab.fingerprint, "tree_fingerprint": tree.fingerprint,
                "sha256": {name: sha256_file(tmp / name) for name in EXPORT_FILES}}
        (tmp / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def load_exported(path, device="cpu") -> Exported:
    """Verify an export's checksums and build its single-device network on ``device``."""
    from safetensors.torch import load_file

    from helm_scale.models.registry import build_model
    from helm_scale.train_config import load_train_config
    root = Path(path)
    meta_path = root / "export.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} is not a helm-scale export (no export.json); "
                                "make one with: helm-scale export RUN_DIR")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{root}: unknown export format {meta.get('format')!r}, expected {FORMAT}")
    for name, want in meta["sha256"].items():
        if not (root / name).is_file() or sha256_file(root / name) != want:
            raise ValueError(f"{root / name} is missing or does not match its recorded sha256")
    vocab = Vocabulary.from_dict(json.loads((root / "vocab.json").read_text()))
    if vocab.fingerprint != Vocabulary.default().fingerprint:
        raise ValueError(f"{root}: the export's vocabulary differs from this helm_scale's")
    tree = CodonTree.from_dict(json.loads((root / "tree.json").read_text()))
    config = load_train_config(str(root / "config.yaml"))
    model = build_model(config.model)
    model.load_state_dict(load_file(root / "model.safetensors"), strict=True)
    return Exported(model.to(device).eval(), config, vocab, tree, int(meta["step"]))


def export_run(run_dir, step: int | None = None, out=None) -> Path:
    """Consolidate checkpoint ``step`` (default: the newest good one) of a run directory."""
    from helm_scale.checkpoint import full_weights
    from helm_scale.config_io import from_dict
    from helm_scale.train_config import TrainConfig
    run = Path(run_dir)
    store = CheckpointStore(run / "checkpoints")
    if not store.steps():
        raise FileNotFoundError(f"{run} has no checkpoints ({store.root} is empty or missing)")
    if step is None:
        step = store.newest_good(report=lambda text: print(text, file=sys.stderr))
        if step is None:
            raise ValueError(f"every checkpoint in {store.root} is damaged")
    elif step not in store.steps():
        raise FileNotFoundError(f"{run} has no checkpoint at step {step}; it has {store.steps()}")
    elif found := store.problems(step):
        raise ValueError(f"checkpoint {store.path(step)} is damaged: " + "; ".join(found[:3]))
    meta = store.read_meta(step)
    config = from_dict(TrainConfig, meta["config"])
    weights = full_weights(store.path(step))
    from helm_scale.models.registry import build_model
    expected = build_model(config.model).state_dict()
    if set(weights) != set(expected) or any(weights[k].shape != v.shape for k, v in expected.items()):
        raise ValueError(f"checkpoint {store.path(step)} does not hold the weights of its own model config")
    return save_export(out or run / "export" / store.dir_name(step), weights, config, step,
                       source=str(store.path(step)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a training run directory (run.run_dir)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest good one)")
    p.add_argument("-o", "--output", default=None, help="export directory (default: RUN/export/step-N)")


def run(args) -> int:
    import warnings
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    try:
        out = export_run(args.run_dir, args.step, args.output)
    except (FileNotFoundError, FileExistsError, ValueError, NotImplementedError) as e:
        print(f"helm-scale export: {e}", file=sys.stderr)
        return 2
    print(f"exported to {out}: load it with helm_scale.export.load_exported({str(out)!r})")
    return 0
