"""The ``helm-scale`` command. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only routes to them."""
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
    "generate": "helm_scale.evaluate.generate_cmd",
    "eval": "helm_scale.evaluate.eval_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helm-scale",
        description="Distributed pretraining of codon-level mRNA language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=summary, description=(module.__doc__ or "").strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args._module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
