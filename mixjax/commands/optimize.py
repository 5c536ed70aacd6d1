"""`mixjax optimize`: optimal weights of a law file at one or more budgets (weights file + table)."""

from __future__ import annotations

import argparse

# experiments/budget_sweep.py and notebooks/quickstart.ipynb import `table` from here
from mixjax.report import plot, table

DESCRIPTION = """Weights on the simplex that minimise the law's total predicted loss at each budget
(tokens). Optional per-domain weight bounds and, with --data DIR (or --available), a cap from the
data that exists: tokens_i <= training tokens_i x --max-epochs. Prints a table of weights vs budget
(with the data: each domain's passes, where the cap binds and the optimum without it) and how far
each budget lies past the runs the law was fitted on; --plot saves fitted curves (with
--observations, against the observed points) and weights vs budget."""


def register(subparsers) -> None:
    from mixjax.commands.flags import add_budget_argument

    parser = subparsers.add_parser(
        "optimize", help="optimal mixture weights from a law file", description=DESCRIPTION
    )
    parser.add_argument("--law-file", required=True, metavar="JSON", help="from `mixjax fit` or by hand")
    add_budget_argument(parser, "training budget in tokens", repeatable=True)
    parser.add_argument("--out", required=True, metavar="JSON", help="weights file to write")
    parser.add_argument("--min-weight", action="append", default=[], metavar="D=X",
                        help="lower bound on a domain's weight; repeatable")
    parser.add_argument("--max-weight", action="append", default=[], metavar="D=X",
                        help="upper bound on a domain's weight; repeatable")
    add_data_arguments(parser)
    parser.add_argument("--plot", metavar="DIR", help="save PNG plots in this folder")
    parser.add_argument("--observations", metavar="CSV", help="observed runs to draw in the plots")
    parser.set_defaults(func=run)


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
    import math

    from mixjax.errors import MixjaxError
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
    from mixjax.errors import MixjaxError

    out = {}
    for v in values:
        name, sep, number = v.partition("=")
        if not sep or not name:
            raise MixjaxError(f"{flag}: expected NAME=NUMBER, got {v!r}")
        try:
            mult = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}.get(number[-1:].lower(), 1) if tokens else 1
            out[name] = float(number[:-1] if mult != 1 else number) * mult
        except ValueError:
            raise MixjaxError(f"{flag}: {name}: not a number: {number!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    from mixjax.commands.fit import check_output_path
    from mixjax.commands.flags import parse_budget_values
    from mixjax.errors import MixjaxError
    from mixjax.io import write_json_atomic
    from mixjax.laws import load_law_file
    from mixjax.observations import read_csv
    from mixjax.optimize import check_budgets, extrapolation_line, optimize

    check_output_path(args.out, "--out")
    if args.plot:
        check_output_path(args.plot, "--plot", folder=True)
    budgets = check_budgets(parse_budget_values(args.budget_tokens))
    fitted = load_law_file(args.law_file)
    bounds = dict(
        min_weight=parse_assignments(args.min_weight, "--min-weight"),
        max_weight=parse_assignments(args.max_weight, "--max-weight"),
        **data_caps(args, fitted.domains),
    )
    obs = None
    if args.observations:
        obs = read_csv(args.observations)
        if sorted(obs.domains) != sorted(fitted.domains):
            raise MixjaxError(
                f"{args.observations}: domains {obs.domains} do not match the law file's "
                f"domains {fitted.domains}"
            )
        obs = obs.select(fitted.domains)
    result = optimize(fitted, budgets, **bounds)
    write_json_atomic(args.out, result.to_json())
    print(table(result))
    line = extrapolation_line(result.budgets, result.run_tokens)
    if line:
        print(line)
    if not result.converged.all():
        print("warning: the optimiser did not fully converge at some budgets (see 'converged')")
    if args.plot:
        paths = plot(fitted, result, obs, args.plot, bounds)
        print("plots: " + ", ".join(paths))
    print(f"wrote {args.out}")
    return 0
