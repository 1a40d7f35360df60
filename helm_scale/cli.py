"""The ``helm-scale`` command. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only routes to them. A
command group (``helm-scale eval downstream ...``) is a (help, {subcommand: module}) pair."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module; modules import their heavy dependencies inside run().
COMMANDS = {
    "synth": "data_prep.synth",
    "prep": "data_prep.prep",
    "verify": "data_prep.verify",
    "train": "helm_scale.trainer",
    "export": "helm_scale.export",
    "eval": ("Evaluate an exported model (each subcommand has --help).", {
        "downstream": "helm_scale.evaluate.downstream",
        "annotate": "helm_scale.evaluate.annotation",
    }),
}


def _add_command(sub, name: str, module_name: str) -> None:
    module = importlib.import_module(module_name)
    summary = (module.__doc__ or "").strip().splitlines()[0]
    p = sub.add_parser(name, help=summary, description=(module.__doc__ or "").strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(_module=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helm-scale",
        description="Distributed pretraining of codon-level mRNA language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, target in COMMANDS.items():
        if isinstance(target, str):
            _add_command(sub, name, target)
            continue
        summary, members = target
        group = sub.add_parser(name, help=summary, description=summary)
        group_sub = group.add_subparsers(dest=f"{name}_command", required=True, metavar="SUBCOMMAND")
        for sub_name, module_name in members.items():
            _add_command(group_sub, sub_name, module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args._module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
