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
    for command in [parser, *subparsers.choices.values()]:
        command.allow_abbrev = False  # `train --budget 20k` must not pass for --budget-tokens
    return parser


# Options whose value may start with '-' (a mesh size of -1). argparse reads "--mesh -1,8,1" as an
# option with no value, so main() joins such pairs into "--mesh=-1,8,1" before parsing.
DASH_VALUE_OPTIONS = ("--mesh",)


def join_dash_values(argv: list[str], options=DASH_VALUE_OPTIONS) -> list[str]:
    """["--mesh", "-1,8,1"] -> ["--mesh=-1,8,1"] for the `options` (nothing after a bare "--")."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out.extend(argv[i:])
            break
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if tok in options and nxt is not None and nxt.startswith("-") and nxt[1:2].isdigit():
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def error_line(command: str, e: MixjaxError) -> str:
    """A library error as the command line shows it: each setting it names as its flag."""
    from mixjax.commands.flags import flag_name

    return f"mixjax {command}: error: {e.render(flag_name)}"


# Commands that compile train steps: on a GPU they start XLA with its GPU flags (`start_xla`).
XLA_COMMANDS = ("train", "sweep", "mix", "plan")


def recorded_choices(args) -> dict:
    """What this machine made of the run's automatic settings, for its settings.json ("recorded",
    which --config does not read back): the backend, the compute dtype 'auto' resolved to, and
    the XLA_FLAGS in force on GPU (None elsewhere)."""
    import jax

    from mixjax.commands.flags import config_values
    from mixjax.train.step import resolve_compute_dtype

    dtype = config_values(args).get("compute_dtype", "auto")
    return {"backend": jax.default_backend(), "compute_dtype": resolve_compute_dtype(dtype),
            "xla_flags": getattr(args, "_xla_flags", None)}


def start_xla(args) -> None:
    """Before JAX starts its backend: on a GPU, the default GPU flags after the user's XLA_FLAGS
    (`mixjax.train.mesh.apply_gpu_xla_flags`); and the record of the automatic choices."""
    from mixjax.train.mesh import apply_gpu_xla_flags

    args._xla_flags = apply_gpu_xla_flags()
    args._recorded = lambda: recorded_choices(args)


def main(argv: list[str] | None = None) -> int:
    from mixjax.commands.config_file import apply_config, config_path

    argv = join_dash_values(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    command = _command_parser(parser, argv[0]) if argv else None
    path = config_path(argv[1:]) if command is not None else None
    if path is not None and any(a.dest == "config" for a in command._actions):
        try:
            apply_config(command, path)
        except MixjaxError as e:
            print(error_line(argv[0], e), file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    args._parser = command
    try:
        if args.command in XLA_COMMANDS:
            start_xla(args)
        return int(args.func(args) or 0)
    except MixjaxError as e:
        print(error_line(args.command, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mixjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
