"""Running the training sub-commands without going through service/cli.py."""

from __future__ import annotations

import argparse

from models.training.commands import add_parsers


def cli_main(argv: list[str]) -> int:
    """``faceserve`` restricted to this package's sub-commands (``train``, ``export``,
    ``heldout-pairs``), the way service/cli.py dispatches them."""
    parser = argparse.ArgumentParser(prog="faceserve")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)

