"""Command-line options of the mixture methods, shared by `mixjax sweep` and `mixjax mix`.

Made from the methods' constructors, as TrainConfig's flags are made from its fields: each keyword a
method lists in its `options` (with the help) becomes a flag --keyword (RENAMES: the few named
otherwise) whose type, choices and default come from the constructor's signature
(`Method.option_specs`, `Method.shown_default`). A flag several methods take says each one's.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Literal

from mixjax.errors import MixjaxError
from mixjax.token_counts import parse_tokens

# constructor keyword -> its flag's dest, where the flag is not --keyword
RENAMES = {"step": "grid_step", "add_runs": "no_extra_runs", "huber_delta": "huber", "n_runs": "runs",
           "sampling": "proxy_sampling"}
ONLINE_ONLY = {"online_eval_batches": ("aioli", "doremi", "doge", "skillit")}


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def method_flags() -> dict[str, tuple[tuple[str, ...], str]]:
    """Each method option's flag dest -> (the methods that take it, their constructor keyword)."""
    from mixjax.methods import method_class, names

    flags: dict[str, tuple[tuple[str, ...], str]] = {}
    for method in names():
        for keyword, spec in method_class(method).option_specs().items():
            if spec.help is not None:
                dest = RENAMES.get(keyword, keyword)
                methods = flags.get(dest, ((), keyword))[0]
                flags[dest] = (methods + (method,), keyword)
    return flags


def _hint(spec):
    """A constructor keyword's annotation, without its `| None`."""
    hint = spec.hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _argument(spec) -> dict:
    """add_argument's options for a constructor keyword, from its annotation and default."""
    from mixjax.methods.base import Tokens

    hint = _hint(spec)
    if hint is bool:  # a switch: it gives the other value than the default
        return {"action": "store_const", "const": not spec.default, "default": None}
    if typing.get_origin(hint) is Literal:
        return {"choices": typing.get_args(hint)}
    if typing.get_origin(hint) in (tuple, list):
        return {"type": _floats, "metavar": "X,..."}
    if hint is Tokens:  # 5M, 500k or 2e7, parsed by `method_options` (a one-line error naming the flag)
        return {"metavar": "N"}
    return {"type": hint, "metavar": "N"} if hint is int else {"type": hint} if hint is float else {}


def _help(methods, keyword: str) -> str:
    """The option's help: each method's, with its default; methods with the same help share it
    ("doremi/doge: ... (default 1; doge 100)"). '%' escaped for argparse."""
    from mixjax.methods import method_class

    by_help: dict[str, list[tuple[str, str | None]]] = {}
    for method in methods:
        cls = method_class(method)
        by_help.setdefault(cls.option_specs()[keyword].help, []).append((method, cls.shown_default(keyword)))
    parts = []
    for text, defaults in by_help.items():
        shown = [(m, d) for m, d in defaults if d]
        default = "" if not shown else f" (default {shown[0][1]})" if len({d for _, d in shown}) == 1 else \
            " (default " + "; ".join(f"{m} {d}" for m, d in shown) + ")"
        parts.append(f"{'/'.join(m for m, _ in defaults)}: {text}{default}")
    return "; ".join(parts).replace("%", "%%")


def add_method_arguments(p: argparse.ArgumentParser, methods: list[str]) -> None:
    """--method, a flag for each method option (listed in the help when one of `methods` takes it:
    `sweep --help` lists no option of an online method, which `sweep` does not take; still parsed,
    so using it says which methods take it) and --online-eval-batches."""
    from mixjax.methods import method_class

    p.add_argument("--method", required=True, choices=methods)
    group = p.add_argument_group("method options (defaults: the papers' settings)")
    for dest, (takers, keyword) in method_flags().items():
        arguments = [_argument(method_class(m).option_specs()[keyword]) for m in takers]
        assert all(a == arguments[0] for a in arguments), f"{dest}: methods {takers} give it different types"
        shown = set(methods) & set(takers)
        group.add_argument(_flag(dest), dest=dest, **arguments[0],
                           help=_help(takers, keyword) if shown else argparse.SUPPRESS)
    group.add_argument("--online-eval-batches", type=int, default=4,
                       help="validation batches per domain for each evaluation an online method asks for"
                       if set(methods) & set(ONLINE_ONLY["online_eval_batches"]) else argparse.SUPPRESS)


def method_options(args) -> dict:
    """The constructor options the user set; an option of another method is an error."""
    from mixjax.methods import method_class
    from mixjax.methods.base import Tokens

    options = {}
    for dest, (methods, keyword) in method_flags().items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if args.method not in methods:
            raise MixjaxError(f"{_flag(dest)} does not apply to --method {args.method} (only {', '.join(methods)})")
        if _hint(method_class(args.method).option_specs()[keyword]) is Tokens:  # 5M, 500k or 2e7
            value = parse_tokens(str(value), _flag(dest))
        options[keyword] = value
    return options
