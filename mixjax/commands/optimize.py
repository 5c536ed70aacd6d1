"""`mixjax optimize`: optimal weights of a law file at one or more budgets (weights file + table)."""

from __future__ import annotations

import argparse

# experiments/budget_sweep.py and notebooks/quickstart.ipynb import `table` from here
from mixjax.report import plot, table

DESCRIPTION = """Weights on the simplex that minimise the law's total predicted loss at each budget
(tokens). Optional per-domain weight bounds and a cap from the data that exists
(tokens_i <= available_i x max_epochs). Prints a table of weights vs budget; --plot saves fitted
curves (with --observations, against the observed points) and weights vs budget."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "optimize", help="optimal mixture weights from a law file", description=DESCRIPTION
    )
    parser.add_argument("--law-file", required=True, metavar="JSON", help="from `mixjax fit` or by hand")
    parser.add_argument("--budget", action="append", required=True, metavar="N",
                        help="training budget in tokens (e.g. 5e6); repeatable")
    parser.add_argument("--out", required=True, metavar="JSON", help="weights file to write")
    parser.add_argument("--min-weight", action="append", default=[], metavar="D=X",
                        help="lower bound on a domain's weight; repeatable")
    parser.add_argument("--max-weight", action="append", default=[], metavar="D=X",
                        help="upper bound on a domain's weight; repeatable")
    parser.add_argument("--available", action="append", default=[], metavar="D=TOKENS",
                        help="tokens of a domain that exist (caps its tokens at this x --max-epochs)")
    parser.add_argument("--max-epochs", type=float, default=None, metavar="E",
                        help="passes allowed over --available data (default 1)")
    parser.add_argument("--plot", metavar="DIR", help="save PNG plots in this folder")
    parser.add_argument("--observations", metavar="CSV", help="observed runs to draw in the plots")
    parser.set_defaults(func=run)


def parse_assignments(values: list[str], flag: str) -> dict[str, float]:
    """NAME=NUMBER pairs; one-line errors name the flag."""
    from mixjax.errors import MixjaxError

    out = {}
    for v in values:
        name, sep, number = v.partition("=")
        if not sep or not name:
            raise MixjaxError(f"{flag}: expected NAME=NUMBER, got {v!r}")
        try:
            out[name] = float(number)
        except ValueError:
            raise MixjaxError(f"{flag}: {name}: not a number: {number!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    from mixjax.commands.fit import check_output_path, parse_budgets
    from mixjax.errors import MixjaxError
    from mixjax.io import write_json_atomic
    from mixjax.laws import load_law_file
    from mixjax.observations import read_csv
    from mixjax.optimize import check_budgets, optimize

    check_output_path(args.out, "--out")
    if args.plot:
        check_output_path(args.plot, "--plot", folder=True)
    budgets = check_budgets(parse_budgets(args.budget))
    fitted = load_law_file(args.law_file)
    bounds = dict(
        min_weight=parse_assignments(args.min_weight, "--min-weight"),
        max_weight=parse_assignments(args.max_weight, "--max-weight"),
        available=parse_assignments(args.available, "--available"),
        max_epochs=args.max_epochs,
    )
    if args.max_epochs is not None and not bounds["available"]:
        raise MixjaxError("--max-epochs needs --available (the tokens each domain has)")
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
    if not result.converged.all():
        print("warning: the optimiser did not fully converge at some budgets (see 'converged')")
    if args.plot:
        paths = plot(fitted, result, obs, args.plot, bounds)
        print("plots: " + ", ".join(paths))
    print(f"wrote {args.out}")
    return 0
