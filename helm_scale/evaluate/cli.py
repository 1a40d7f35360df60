"""The command line every evaluation command shares (``helm-scale eval WHAT`` and
``helm-scale generate``): each command is a module with ``add_arguments(parser)`` and
``run(args) -> int`` whose docstring is its help, as helm_scale.cli's commands are.

The same thing has the same option, help and default in every command:

    EXPORT                   an export directory (helm-scale export), positional
    --data PATH              sequences: a FASTA(.gz / .zst) file or a prepared dataset directory
    --split train|val|test   the split of a dataset directory (default test)
    -o, --output PATH        where the result goes (each command says what it writes)
    --seed N                 the seed of every random choice the command makes
    --batch-size N           sequences per model forward (the probes: rows per head update)
    --device, --threads, --quiet   torch device, torch CPU threads, no progress bars

Bad input (EvalInputError, a sequence's SequenceError, a missing file) prints ``helm-scale eval WHAT: error: ...`` and
exits 2; commands whose result is a JSON object print it and write it to --output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helm_scale.evaluate.sequences import EvalInputError
from helm_scale.tokenizer import SequenceError


def add_export(p: argparse.ArgumentParser, what: str = "export directory (helm-scale export)") -> None:
    p.add_argument("export", metavar="EXPORT", help=what)


def add_split(p: argparse.ArgumentParser, flag: str = "--split", of: str = "a dataset directory",
              default: str = "test") -> None:
    p.add_argument(flag, default=default, choices=("train", "val", "test"), help=f"split of {of} (default {default})")


def add_seed(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--seed", type=int, default=0, help=f"seed of {what} (default 0)")


def add_batch_size(p: argparse.ArgumentParser, default: int = 16, what: str = "sequences per model forward") -> None:
    p.add_argument("--batch-size", type=int, default=default, help=f"{what} (default {default})")


def add_json_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="also write the JSON result to this file")
    p.set_defaults(_json_output=True)


def add_head_training(p: argparse.ArgumentParser, lr: float, max_epochs: int):
    """The probes' head training (eval downstream, eval annotate); returns the group."""
    g = p.add_argument_group("heads")
    g.add_argument("--seeds", type=int, default=3, help="head seeds (default 3)")
    g.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g})")
    g.add_argument("--batch-size", type=int, default=32, help="rows per head update (default 32)")
    g.add_argument("--max-epochs", type=int, default=max_epochs, help=f"at most this many epochs (default {max_epochs})")
    g.add_argument("--patience", type=int, default=5, help="epochs without a better val loss (default 5)")
    return g


def add_runtime(p: argparse.ArgumentParser, device: bool = True) -> None:
    g = p.add_argument_group("runtime")
    if device:
        g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def load_export(path, device: str = "cpu"):
    """helm_scale.export.load_exported, with a bad export as bad input."""
    from helm_scale.export import load_exported
    try:
        return load_exported(path, device=device)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # no export, bad checksum, other vocabulary
        raise EvalInputError(str(e)) from None


def run_command(prog: str, body, args) -> int:
    """``body(args)`` with the runtime options applied; bad input exits 2. A dict returned
    is the command's result: printed as JSON (and written to --output, see add_json_output)."""
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)
    try:
        result = body(args)
    except (EvalInputError, SequenceError, FileNotFoundError, FileExistsError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if not isinstance(result, dict):
        return result
    text = json.dumps(result, indent=1)
    if getattr(args, "_json_output", False) and args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0
