"""The ``helm-scale`` command. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only routes to them."""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

# subcommand -> module; modules import their heavy dependencies inside run().
COMMANDS = {
    "synth": "data_prep.synth",
    "prep": "data_prep.prep",
    "verify": "data_prep.verify",
    "train": "helm_scale.trainer",
    "export": "helm_scale.export",
    "generate": "helm_scale.evaluate.generation.generate_cmd",
    "eval": "helm_scale.evaluate.eval_cmd",
    "launch": "launcher.launch",
}


def _docstring(module_name: str) -> str:
    """A command module's docstring, read without importing it: `launch` must not pull in
    torch through `train` (it runs where torch may be absent)."""
    origin = importlib.util.find_spec(module_name).origin
    return (ast.get_docstring(ast.parse(Path(origin).read_text())) or "").strip()


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the commands in ``load`` (default: all) import their module."""
    load = set(COMMANDS if load is None else load)
    parser = argparse.ArgumentParser(
        prog="helm-scale",
        description="Distributed pretraining of codon-level mRNA language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        doc = _docstring(module_name)
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name in load:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([command] if command in COMMANDS else []).parse_args(argv)
    return args._module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
