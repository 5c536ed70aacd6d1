"""The `mixjax` command: a dispatcher over `mixjax.commands.*`."""

from __future__ import annotations

import argparse
import importlib
import sys

from mixjax.commands import COMMAND_MODULES
from mixjax.errors import MixjaxError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixjax", description="Find the data mixture for fine-tuning a language model."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mixjax.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"mixjax.commands.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MixjaxError as e:
        print(f"mixjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mixjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
