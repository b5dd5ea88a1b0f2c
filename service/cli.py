"""The ``faceserve`` command: one entry point, one sub-command module per concern.

Each module in ``SUBCOMMANDS`` exposes ``add_parsers(subparsers)``, which registers its
sub-commands and sets ``func`` on each parser; ``func(args) -> int`` is the exit code.
Modules are imported only when the CLI starts, so ``--help`` stays quick to extend.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: list[str] = [
    "models.commands",
    "models.evaluation.commands",
    "models.training.commands",
    "service.commands",
    "models.cluster_command",
    "service.bulk_commands",
    "service.archive_commands",
    "service.backup_commands",
    "service.model_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceserve",
        description=(
            "Self-hosted face recognition: detect, align and embed faces with the CC0 dlib "
            "models ported to PyTorch, and serve enrollment, 1:1 verification and 1:n "
            "identification over HTTP."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
