"""`mixjax optimize`: optimal weights of a law file at one or more budgets (weights file + table)."""

from __future__ import annotations

import argparse

DESCRIPTION = """Weights on the simplex that minimise the law's total predicted loss at each budget
(tokens). Optional per-domain weight bounds and, with --data DIR (or --available), a cap from the
data that exists: tokens_i <= training tokens_i x --max-epochs. Prints a table of weights vs budget
(with the data: each domain's passes, where the cap binds and the optimum without it) and how far
each budget lies past the runs the law was fitted on; --plot saves fitted curves (with
--observations, against the observed points) and weights vs budget."""


def register(subparsers) -> None:
    from mixjax.commands.flags import add_budget_argument, add_data_arguments

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


def run(args: argparse.Namespace) -> int:
    from mixjax.commands.flags import data_caps, parse_assignments, parse_budget_values
    from mixjax.errors import MixjaxError
    from mixjax.io import check_output_path, write_json_atomic
    from mixjax.laws import load_law_file
    from mixjax.observations import read_csv
    from mixjax.optimize import check_budgets, extrapolation_line, optimize
    from mixjax.report import plot, table

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
