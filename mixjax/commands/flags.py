"""The flags of the library's settings, in one place.

`train`, `sweep` and `mix` take a flag for each `TrainConfig` field, made from the field: its name
(--batch-size), type, default, choices and help. SPECIAL holds the few that differ (--bf16 besides
--compute-dtype, --mesh D,F,T, --quiet, ...). `flag_name` is the flag an error's setting is shown as
(library errors name settings, `mixjax.errors`). Below them, the flags several commands share:
--budget-tokens, the data cap (--data, --available, --max-epochs) and NAME=NUMBER lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Callable

from mixjax.commands.method_options import RENAMES
from mixjax.errors import MixjaxError
from mixjax.kernels import registry
from mixjax.token_counts import parse_tokens, tokens_value
from mixjax.train.config import TrainConfig, parse_mesh  # the one --mesh parser

UNSET = object()  # a flag not given: its field keeps TrainConfig's default


@dataclasses.dataclass(frozen=True)
class Flags:
    """How the command line sets one TrainConfig field: its flags (flag -> add_argument options;
    for the field's own --field-name, options added to those made from the field) and the field's
    value from the parsed arguments (None: the own flag's value; UNSET: the field's default)."""

    options: dict[str, dict]
    value: Callable[[argparse.Namespace], Any] | None = None
    shown_as: str | None = None  # the flag errors name when there are several (None: the setting's name)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _switch(flag: str, help: str, value: Any) -> Flags:
    """A flag without a value that gives the field `value` (left out: the field's default)."""
    return Flags({flag: {"action": "store_true", "help": help}},
                 lambda args: value if getattr(args, _dest(flag)) else UNSET)


def execution_overrides(args) -> dict:
    """The model fields set by --attention, --remat and --[no-]scan-layers (checked here, so a bad
    value is a one-line error before any data is read)."""
    from mixjax.model.config import check_execution

    given = {k: getattr(args, k, None) for k in ("attention", "remat", "scan_layers")}
    check_execution(given["attention"], given["remat"])
    return {k: v for k, v in given.items() if v is not None}


NO_FLAG = Flags({})
# The TrainConfig fields whose flags are not plain `--field-name VALUE`: the one place where the
# command line and the configuration differ.
SPECIAL: dict[str, Flags] = {
    "init": Flags({"--init": {"metavar": "CKPT"}}),
    "b1": NO_FLAG, "b2": NO_FLAG, "eps": NO_FLAG,
    "clip_norm": Flags({"--clip-norm": {}}, lambda args: args.clip_norm or None),  # 0: off
    "compute_dtype": Flags({"--compute-dtype": {}, "--bf16": {"action": "store_true",
                                                              "help": "the same as --compute-dtype bfloat16"}},
                           lambda args: "bfloat16" if args.bf16 else args.compute_dtype, "--compute-dtype"),
    "select_best": NO_FLAG,
    "resume": _switch("--no-resume", "ignore checkpoints already in RUN_DIR", False),
    "mesh_shape": Flags({"--mesh": {"default": None, "metavar": "D,F,T",
                                    "help": "mesh (data, fsdp, tensor); default all data"}},
                        lambda args: UNSET if args.mesh is None else parse_mesh(args.mesh)),
    "model_overrides": Flags({
        "--attention": {"default": None, "metavar": "IMPL", "help": registry.flag_help()},
        "--remat": {"default": None, "metavar": "POLICY",
                    "help": "none|dots|full: recompute each layer in the backward pass (dots keeps the "
                            "projections, full only the layer inputs); default none"},
        "--scan-layers": {"action": argparse.BooleanOptionalAction, "default": None,
                          "help": "scan over the layers (compile time flat in depth) or unroll them (faster "
                                  "steps for shallow models); default: scan models of more than 4 layers"},
    }, lambda args: execution_overrides(args)),  # looked up when called (tests patch it)
    "progress": _switch("--quiet", "no progress bar", False),
}
# Only `mixjax train` takes these; sweep and mix decide their runs' checkpoints themselves.
CHECKPOINT_FIELDS = ("keep_best", "checkpoint_every", "resume")


def _own_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Library arguments (not TrainConfig fields) whose flag is not --name: a run's folder, the budgets of
# `fit` and `optimize`, and the methods' constructor keywords whose option has another name
# (n_runs -> --runs, step -> --grid-step; read from method_options.RENAMES).
OTHER_FLAGS = {"out_dir": "--out", "budgets": "--budget-tokens",
               **{keyword: _own_flag(dest) for keyword, dest in RENAMES.items()}}


def flags_of(field: dataclasses.Field) -> Flags:
    return SPECIAL.get(field.name, Flags({_own_flag(field.name): {}}))


def _field_options(field: dataclasses.Field) -> dict:
    """add_argument's options for a field's own flag: its type, default, choices and help."""
    hint = typing.get_type_hints(TrainConfig)[field.name]
    kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)  # X | None -> X
    if kind is bool:
        assert field.default is False, field.name  # a switch that turns the setting on
        return {"action": "store_true", "help": field.metadata["help"]}
    options = {"default": field.default, "help": field.metadata["help"]}
    if kind in (int, float):
        options["type"] = kind
    if "choices" in field.metadata:
        options["choices"] = field.metadata["choices"]
    return options


def _add_flags(p: argparse.ArgumentParser, fields) -> None:
    for field in fields:
        for flag, options in flags_of(field).options.items():
            own = flag == _own_flag(field.name)
            p.add_argument(flag, **({**_field_options(field), **options} if own else options))


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The model / optimisation flags (shared with commands that train, e.g. sweep and mix)."""
    _add_flags(p, [f for f in dataclasses.fields(TrainConfig) if f.name not in CHECKPOINT_FIELDS])


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """--keep-best, --checkpoint-every and --no-resume (`mixjax train`)."""
    _add_flags(p, [f for f in dataclasses.fields(TrainConfig) if f.name in CHECKPOINT_FIELDS])


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig's fields as the parsed flags set them (fields without a flag here are left out)."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        spec = flags_of(field)
        if not spec.options or not all(hasattr(args, _dest(flag)) for flag in spec.options):
            continue  # no flag, or not one of this command's
        value = spec.value(args) if spec.value is not None else getattr(args, field.name)
        if value is not UNSET:
            values[field.name] = value
    return values


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the parsed flags; it checks its own values."""
    return TrainConfig(**config_values(args))


def flag_sections() -> dict[str, str]:
    """Each TrainConfig flag's dest -> its field's section (for --config files)."""
    return {_dest(flag): field.metadata["section"]
            for field in dataclasses.fields(TrainConfig) for flag in flags_of(field).options}


def flag_name(setting: str) -> str:
    """The flag that sets `setting` (a TrainConfig field or a library argument), as errors show it;
    a setting no single flag sets is shown as is."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if setting in fields:
        flags = list(flags_of(fields[setting]).options)
        return flags[0] if len(flags) == 1 else (flags_of(fields[setting]).shown_as or setting)
    return OTHER_FLAGS.get(setting, _own_flag(setting))


class _BudgetTokens(argparse.Action):
    """--budget-tokens N (N as 5M, 500k or 2e7); --budget, its old name, still works for one release
    with a note on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        if option_string == "--budget":
            print(f"mixjax {parser.prog.split()[-1]}: note: --budget is now --budget-tokens "
                  "(the old name goes in the next release)", file=sys.stderr)
        if self.nargs is None and isinstance(self.default, list):  # repeatable
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        else:
            setattr(namespace, self.dest, values)


def add_budget_argument(p: argparse.ArgumentParser, help: str, *, repeatable: bool = False,
                        required: bool = True) -> None:
    """The one budget flag: --budget-tokens (alias --budget), in tokens as 5M, 500k or 2e7."""
    p.add_argument("--budget-tokens", "--budget", dest="budget_tokens", action=_BudgetTokens,
                   default=[] if repeatable else None, required=required, metavar="N",
                   help=help + (" (e.g. 5M, 500k or 2e7); repeatable" if repeatable else " (e.g. 5M, 500k or 2e7)"))


def parse_budget_values(values) -> list[float]:
    """The budgets given to --budget-tokens, parsed as `train` parses its budget; one-line errors."""
    return [float(parse_tokens(v, "--budget-tokens")) for v in ([values] if isinstance(values, str) else values)]


def add_data_arguments(parser) -> None:
    """--data, --available and --max-epochs: the cap tokens_i <= train tokens_i x max_epochs."""
    from mixjax.optimize import DEFAULT_MAX_EPOCHS

    parser.add_argument("--data", metavar="DIR",
                        help="prepared data directory: cap each domain's tokens at its training tokens x "
                             "--max-epochs, and report each domain's passes at the budget")
    parser.add_argument("--available", action="append", default=[], metavar="D=TOKENS",
                        help="tokens of a domain that exist (overrides --data's count for that domain); repeatable")
    parser.add_argument("--max-epochs", type=float, default=None, metavar="E",
                        help=f"most passes over a domain's training tokens, with --data or --available "
                             f"(default {DEFAULT_MAX_EPOCHS:g}, as `train`)")


def data_caps(args, domains: list[str], what: str = "the law's") -> dict:
    """`optimize`'s available/max_epochs from --data, --available and --max-epochs (one-line errors:
    a data directory whose domains differ from `domains`, --max-epochs without data)."""
    from mixjax.optimize import DEFAULT_MAX_EPOCHS

    available = {}
    if args.data:
        from mixjax.data.prepared import PreparedData

        data = PreparedData(args.data)
        if sorted(data.domains) != sorted(domains):
            raise MixjaxError(f"--data {args.data}: its domains {list(data.domains)} differ from {what} "
                              f"domains {list(domains)}")
        available = {d: float(n) for d, n in data.train_tokens().items()}
    available.update(parse_assignments(args.available, "--available", tokens=True))
    if args.max_epochs is not None:
        if not available:
            raise MixjaxError("--max-epochs needs --data (or --available: the tokens each domain has)")
        if not (math.isfinite(args.max_epochs) and args.max_epochs > 0):
            raise MixjaxError(f"--max-epochs must be a finite number > 0, got {args.max_epochs}")
    if not available:
        return {}
    return {"available": available,
            "max_epochs": DEFAULT_MAX_EPOCHS if args.max_epochs is None else float(args.max_epochs)}


def parse_assignments(values: list[str], flag: str, tokens: bool = False) -> dict[str, float]:
    """NAME=NUMBER pairs (`tokens`: NUMBER as 5M, 500k or 2e7); one-line errors name the flag."""
    out = {}
    for v in values:
        name, sep, number = v.partition("=")
        if not sep or not name:
            raise MixjaxError(f"{flag}: expected NAME=NUMBER, got {v!r}")
        try:
            out[name] = tokens_value(number) if tokens else float(number)
        except ValueError:
            raise MixjaxError(f"{flag}: {name}: not a number: {number!r}") from None
    return out
