"""`mixjax fit`: fit a mixing law to a CSV of runs and write the law file (with diagnostics)."""

from __future__ import annotations

import argparse

DESCRIPTION = """Fit a mixing law to observed runs (observations CSV: run, tokens_<d>, loss_<d>).
Every run's loss on every domain informs that domain's law. Writes the law file (JSON) with
diagnostics: RMSE and R^2 per domain, leave-one-run-out error, observations vs free parameters
(under-determination flag) and, with --budget-tokens, bootstrap intervals of the optimal weights."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit", help="fit a mixing law to observed runs", description=DESCRIPTION
    )
    parser.add_argument("--law", required=True, help="li2025, li2025-pairwise, li2025-repeat (needs the data's training tokens), loglinear or linear")
    parser.add_argument("--observations", required=True, metavar="CSV", help="the runs (CSV)")
    parser.add_argument("--out", required=True, metavar="JSON", help="law file to write")
    parser.add_argument("--huber", type=float, default=None, metavar="DELTA",
                        help="Huber loss with this delta (the paper uses 1e-3); default least squares")
    parser.add_argument("--token-unit", type=float, default=1e6, metavar="N",
                        help="tokens per unit inside the law (default 1e6, as in the paper)")
    from mixjax.commands.flags import add_budget_argument, add_data_arguments

    add_budget_argument(parser, "budget (tokens) for bootstrap intervals of the optimal weights",
                        repeatable=True, required=False)
    add_data_arguments(parser)
    parser.add_argument("--starts", type=int, default=32, metavar="N",
                        help="random starts per domain, at least (default 32); they are solved in one batch "
                             "with the leave-one-out and bootstrap refits, 8 per refit (refits rounded up "
                             "to a multiple of 8), so the law file's fit.starts_per_domain records the "
                             "starts used: max(N, 8 x refits), e.g. 320 for 13 runs and 20 bootstraps")
    parser.add_argument("--bootstrap", type=int, default=20,
                        help="resamples of the runs for the weight intervals (default 20; 0 = off)")
    parser.add_argument("--no-loo", action="store_true", help="skip leave-one-run-out refits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate", metavar="CSV",
                        help="runs the fit does not see (observations CSV): print and write the law's "
                             "predicted losses against the measured ones, RMSE and rank correlation")
    parser.add_argument("--validate-out", metavar="CSV",
                        help="where --validate writes run, measured_<d>, predicted_<d> (default: --out "
                             "with .validation.csv in place of .json)")
    parser.set_defaults(func=run)


def unique_tokens(law, caps: dict, domains) -> dict | None:
    """The unfitted fields of a law that has them (li2025-repeat: each domain's unique training
    tokens, from --data or --available), else None; a one-line error when they are missing."""
    from mixjax.errors import MixjaxError

    if not law.fixed_fields:
        return None
    available = caps.get("available", {})
    missing = [d for d in domains if d not in available]
    if missing:
        raise MixjaxError(f"--law {law.name}: needs each domain's training tokens; give --data DIR (or "
                          f"--available for {', '.join(missing)})")
    return {"unique": {d: float(available[d]) for d in domains}}


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from mixjax import laws
    from mixjax.errors import MixjaxError
    from mixjax.commands.flags import data_caps, parse_budget_values
    from mixjax.fit import FitOptions, fit
    from mixjax.io import check_output_path
    from mixjax.observations import read_csv

    check_output_path(args.out, "--out")
    validate_out = None
    if args.validate:
        validate_out = args.validate_out or str(Path(args.out).with_suffix("")) + ".validation.csv"
        check_output_path(validate_out, "--validate-out")
    elif args.validate_out:
        raise MixjaxError("--validate-out needs --validate CSV")
    from mixjax.optimize import check_budgets, weight_bounds

    law = laws.get(args.law)
    budgets = list(check_budgets(parse_budget_values(args.budget_tokens))) if args.budget_tokens else []
    if args.starts < 1:
        raise MixjaxError(f"--starts: must be at least 1, got {args.starts}")
    obs = read_csv(args.observations)
    caps = data_caps(args, obs.domains, what="the observations'")
    if caps and budgets:
        weight_bounds(list(obs.domains), np.asarray(budgets), **caps)  # an infeasible cap fails before the fit
    held_out = read_csv(args.validate) if args.validate else None  # a bad file fails before the fit
    options = FitOptions(
        n_starts=args.starts,
        huber_delta=args.huber,
        seed=args.seed,
        n_bootstrap=max(args.bootstrap, 0),
        leave_one_out=not args.no_loo,
        fast_compile=True,  # one fit per process: compile time dominates
    )
    fitted = fit(law, obs, token_unit=args.token_unit, budgets=budgets, options=options,
                 fixed=unique_tokens(law, caps, obs.domains), **caps)
    laws.save_law_file(fitted, args.out)
    print(summary(fitted))
    print(f"wrote {args.out}")
    if held_out is not None:
        from mixjax import validation

        try:
            report = validation.validate(fitted, held_out)
        except MixjaxError as e:
            raise MixjaxError(f"--validate {args.validate}: {e}") from None
        validation.write_validation_csv(report, fitted.domains, validate_out)
        print(validation.summary(report, fitted.domains))
        print(f"wrote {validate_out}")
    return 0


def summary(fitted) -> str:
    """A few lines: fit quality per domain, LOO error, the under-determination message, intervals."""
    d = fitted.diagnostics
    loo = d.get("leave_one_out", {}).get("domains", {})
    lines = [f"law {fitted.law.name}: {d['n_runs']} runs, {d['n_observations']} losses, "
             f"{d['n_free_params']} free parameters, RMSE {d['rmse']:.4g}"]
    lines.append(f"{'domain':<16}{'obs':>5}{'params':>7}{'RMSE':>11}{'R^2':>9}{'LOO RMSE':>11}")
    for name, q in d["domains"].items():
        r2 = "-" if q["r2"] is None else f"{q['r2']:.4f}"
        loo_rmse = loo.get(name, {}).get("rmse")
        loo_text = "-" if loo_rmse is None else f"{loo_rmse:.4g}"
        lines.append(f"{name:<16}{q['n_observations']:>5}{q['n_free_params']:>7}"
                     f"{q['rmse']:>11.4g}{r2:>9}{loo_text:>11}")
    lines.append(("UNDER-DETERMINED: " if d["under_determined"] else "") + d["message"])
    for res in d.get("bootstrap", {}).get("results", []):
        ranges = ", ".join(
            f"{k} {res['weights_p05'][k]:.3f}-{res['weights_p95'][k]:.3f}" for k in fitted.domains
        )
        lines.append(f"budget {res['budget']:g}: 90% bootstrap interval of weights: {ranges}")
    return "\n".join(lines)
