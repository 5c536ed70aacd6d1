"""`mixjax next`: from the runs so far, the next run(s) to train and whether to stop (adaptive design)."""

from __future__ import annotations

DESCRIPTION = """Fit a mixing law to the runs so far (observations CSV: run, tokens_<d>, loss_<d>),
print the optimal weights at --budget-tokens with their 90% intervals, and say whether to stop:
every weight's interval narrower than --tolerance. Unless it is time to stop, propose the next
--runs run(s): among li2025's perturbations around the current optimum and mixtures near it, the
ones that most increase log det of the Fisher information of the law's parameters (D-optimal).
RUNS.json lists them as [{"name", "weights", "budget_tokens"}] (the run entries of sweep.json);
it is [] when the rule says stop. Names are made from the runs' token counts, so proposing again
from the same runs gives the same names. To train them: mixjax sweep --method li2025 --run-list
RUNS.json --out NEW_DIR ..., then pass NEW_DIR/observations.csv here too (or let
`mixjax mix --method li2025 --adaptive` do the whole loop). Runs too few or too alike to fit the
law give no weights yet: RUNS.json then lists the runs that identify it (from the adaptive design's
start: the uniform base run and spread-out mixtures), whatever --runs says."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("next", help="propose the next run(s) of an adaptive design, or stop",
                                   description=DESCRIPTION)
    parser.add_argument("observations", metavar="OBSERVATIONS.csv", nargs="+",
                        help="the runs so far (one or more CSVs, e.g. a sweep's and the runs added since)")
    from mixjax.commands.flags import add_budget_argument

    add_budget_argument(parser, "the target budget in tokens")
    parser.add_argument("--law", default="li2025", help="the law to fit (default li2025)")
    parser.add_argument("--huber", type=float, default=1e-3, metavar="DELTA",
                        help="fit with a Huber loss of this delta (default 1e-3, li2025's and that of "
                             "mix --method li2025 --adaptive); 0 = least squares")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="stop when every weight's 90%% interval is narrower than this (default 0.02)")
    parser.add_argument("--runs", type=int, default=1, help="runs to propose (default 1)")
    parser.add_argument("--base-fraction", type=float, default=0.25,
                        help="the candidates' base run has this fraction of the budget (default 0.25, as li2025)")
    parser.add_argument("--uncertainty", choices=("laplace", "bootstrap"), default="laplace",
                        help="how the weight intervals are estimated (default laplace: draws from the fit's t "
                             "approximation; bootstrap: refits on resampled runs)")
    parser.add_argument("--samples", type=int, default=200, help="draws or resamples for the intervals (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, metavar="RUNS.json", help="where to write the proposed runs")
    parser.set_defaults(func=run)


def run(args) -> int:
    import math

    from mixjax import laws
    from mixjax.errors import MixjaxError
    from mixjax.fit import FitOptions
    from mixjax.io import check_output_path
    from mixjax.methods import adaptive_design
    from mixjax.observations import read_csv
    from mixjax.token_counts import parse_tokens

    check_output_path(args.out, "--out")
    adaptive_design.should_stop([0.0], args.tolerance)  # checks --tolerance before any work
    if args.runs < 1:
        raise MixjaxError(f"--runs: must be at least 1, got {args.runs}")
    budget = parse_tokens(args.budget_tokens, "--budget-tokens")
    law = laws.get(args.law)
    obs = read_csv(args.observations[0])
    for path in args.observations[1:]:
        obs = obs.concat(read_csv(path))
    if not (math.isfinite(args.huber) and args.huber >= 0):
        raise MixjaxError(f"--huber: must be a delta > 0, or 0 for least squares; got {args.huber:g}")
    if not (args.base_fraction > 0):
        raise MixjaxError(f"--base-fraction: must be positive, got {args.base_fraction:g}")
    if adaptive_design.identification_problems(obs, law):
        return _propose_identifying(obs, law, budget, args)
    a = adaptive_design.assess(obs, law, budget, n_boot=args.samples, seed=args.seed, method=args.uncertainty,
                        fit_options=FitOptions(huber_delta=args.huber or None))
    stop = adaptive_design.should_stop(a.widths, args.tolerance)
    print(f"law {law.name} on {len(obs.runs)} runs; optimal weights at {budget:,} tokens "
          f"(90% interval, {args.uncertainty}):")
    for j, d in enumerate(a.domains):
        print(f"  {d:<16}{a.weights[j]:.4f}  [{a.p05[j]:.4f}, {a.p95[j]:.4f}]  width {a.widths[j]:.4f}")
    widest = int(a.widths.argmax())
    if stop:
        print(f"stop: yes - every interval is narrower than {args.tolerance:g}")
        proposed = []
    else:
        print(f"stop: no - {a.domains[widest]}'s interval is {a.widths[widest]:.4f} wide "
              f"(tolerance {args.tolerance:g})")
        candidates = adaptive_design.candidate_runs(obs, a.domains, budget, args.base_fraction, weights=a.weights)
        proposed = adaptive_design.propose_next(obs, law, budget, candidates, n=args.runs, fitted=a.fitted)
        for r in proposed:
            mix = ", ".join(f"{d} {w:.3f}" for d, w in r.weights.items())
            print(f"next: {r.name}  ({r.budget_tokens:,} tokens: {mix})")
    return _write_runs(args.out, proposed)


def _write_runs(out, proposed) -> int:
    from mixjax.io import write_json_atomic

    write_json_atomic(out, [{"name": r.name, "weights": r.weights, "budget_tokens": r.budget_tokens}
                            for r in proposed])
    print(f"wrote {out} ({len(proposed)} run(s))")
    return 0


def _propose_identifying(obs, law, budget, args) -> int:
    """Runs too few or too alike to fit the law: no weights yet, but the runs that would identify it
    (from the adaptive design's start), and why."""
    from mixjax.methods import adaptive_design

    problems = adaptive_design.identification_problems(obs, law)
    proposed = adaptive_design.identifying_runs(obs, law, budget, args.base_fraction)
    print(f"law {law.name} on {len(obs.runs)} runs: not identified yet, so no optimal weights - "
          + " | ".join(problems))
    print(f"stop: no - train these {len(proposed)} run(s) first (from the adaptive design's start; together "
          "with the runs so far they identify the law), then run `mixjax next` again")
    for r in proposed:
        mix = ", ".join(f"{d} {w:.3f}" for d, w in r.weights.items())
        print(f"next: {r.name}  ({r.budget_tokens:,} tokens: {mix})")
    return _write_runs(args.out, proposed)
