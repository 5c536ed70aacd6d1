"""Issue 24 item 2 on simulated runs: does knowing repetition help li2025 extrapolate from cheap runs?

A known law plays the truth: li2025-repeat (the li2025 law on Muennighoff et al.'s effective own
tokens) with one small domain that the target budget T repeats many times, or plain li2025 (no
repetition effect: every variant should then do as well as li2025). Runs are simulated at design
budgets T/16 and T/4 (li2025's design: base run of a quarter of the budget, 13 runs for 3 domains)
with Gaussian noise on every loss; each variant fits its law and optimises at T (no epoch cap: the
law decides); the truth scores the weights. Reported: the share of stratified's gap to the truth's
optimum that the weights recover, (L_strat - L_method) / (L_strat - L_opt), mean and standard error
over seeds.

Variants (keywords of mixjax.methods.offline.Li2025):
  li2025                       the law as it is
  repeat R*=15 / repeat fit R* law li2025-repeat, R* fixed at Muennighoff's 15 / fitted per domain
  target_budget, law li2025    runs on each domain cut to run budget / T (repetition-matched), law li2025
  repeat fit R* + target_budget  the same runs, law li2025-repeat (the default with target_budget)
  along_run=4                  4 evaluations along each run as observations (constant learning rate
                               assumed valid: the simulation has no schedule)
  scales=1,0.25                the design at two sizes (1.25x the tokens)
and combinations of the repeat law with along_run and scales.

    python experiments/repetition_sim.py            # 3 seeds, writes results/repetition_sim.{json,md}
    python experiments/repetition_sim.py --quick    # 1 seed, 1 setting: checks the script
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOMAINS = ["if", "math", "code"]
# math gains most from data (largest C and beta), so a law that does not know it has only 2M tokens
# gives it ~0.5 at T = 20M (5 passes); with R* = 5 the truth's optimum is 0.41 and that 0.5 is
# further from it than stratified (regret 0.028 nats against stratified's 0.026)
BASE_PARAMS = {"C": [3.0, 6.0, 2.8], "k": [0.5, 0.3, 0.4], "alpha": [0.5, 0.6, 0.4],
               "beta": [0.3, 0.5, 0.35], "E": [1.0, 0.6, 0.8]}
TARGET = 20e6
# name -> (R*, unique tokens per domain, ratios, variants (None: all))
SETTINGS = {
    "small math, R*=5": (5.0, [60e6, 2e6, 30e6], (16, 4), None),
    "no repetition": (None, [1e12, 1e12, 1e12], (16,),
                      ("li2025", "repeat fit R*", "repeat fit R* + target_budget", "along_run=4")),
}
VARIANTS = {
    "li2025": {},
    "repeat R*=15": {"law": "li2025-repeat", "r_star": 15.0},
    "repeat fit R*": {"law": "li2025-repeat"},
    "target_budget, law li2025": {"law": "li2025", "target_budget": int(TARGET)},
    "repeat fit R* + target_budget": {"target_budget": int(TARGET)},  # li2025-repeat: the default with it
    "along_run=4": {"along_run": 4},
    "scales=1,0.25": {"scales": (1.0, 0.25)},
    "repeat R*=15 + along_run=4": {"law": "li2025-repeat", "r_star": 15.0, "along_run": 4},
}


def truth_law(r_star, unique):
    from mixjax.laws import FittedLaw

    params = dict(BASE_PARAMS, R_star=[r_star or 15.0] * 3, unique=[u / 1e6 for u in unique])
    return FittedLaw.from_json({"law": "li2025-repeat", "domains": DOMAINS, "token_unit": 1e6, "params": params})


def true_losses(truth, tokens_RxK, fractions_R=None):
    """The truth's losses (R, K); a run on data cut to `fraction` has that fraction of unique tokens."""
    import jax

    from mixjax.laws import predict

    fractions_R = np.ones(len(tokens_RxK)) if fractions_R is None else np.asarray(fractions_R)
    out = []
    with jax.enable_x64(True):
        for tokens, frac in zip(tokens_RxK, fractions_R):
            p = truth.params._replace(unique=truth.params.unique * frac)
            out.append(np.asarray(predict(truth.law, p, np.asarray(tokens) / 1e6)))
    return np.array(out)


def simulated_runs(method, truth, design_budget, noise, rng):
    """The method's runs at `design_budget`, simulated: an Observations table (rows along each run
    with along_run, each run on cut data with target_budget)."""
    from mixjax.observations import Observations

    runs = method.propose(DOMAINS, int(design_budget))
    names, tokens, fractions = [], [], []
    for run in runs:
        run_tokens = np.array([run.weights[d] * run.budget_tokens for d in DOMAINS])
        frac = min(1.0, run.budget_tokens / method.target_budget) if method.target_budget else 1.0
        points = [(s + 1) / method.along_run for s in range(method.along_run)] if method.along_run else [1.0]
        for f in points:
            names.append(run.name if f == 1.0 else f"{run.name}.at{f:g}")
            tokens.append(run_tokens * f)
            fractions.append(frac)
    tokens = np.array(tokens)
    losses = true_losses(truth, tokens, fractions) + noise * rng.standard_normal((len(tokens), len(DOMAINS)))
    return Observations(names, DOMAINS, tokens, losses)


def total_at_target(truth, weights_K):
    return float(true_losses(truth, np.asarray(weights_K)[None] * TARGET).sum())


def truth_optimum(truth):
    from mixjax.optimize import optimize

    return optimize(truth, [TARGET]).weights[0]


def one_case(truth, unique, variant: dict, design_budget, noise, seed):
    from mixjax.fit import FitOptions
    from mixjax.methods.offline import Li2025

    available = dict(zip(DOMAINS, unique))
    method = Li2025(**variant, available=available, max_epochs=1e9,
                    fit_options=FitOptions(n_starts=16, n_bootstrap=0, leave_one_out=False, seed=seed,
                                           fast_compile=True))
    obs = simulated_runs(method, truth, design_budget, noise, np.random.default_rng([seed, int(design_budget)]))
    weights = method.recommend(obs, DOMAINS, int(TARGET))
    w = np.array([weights[d] for d in DOMAINS])
    tokens = sum(r.budget_tokens for r in method.propose(DOMAINS, int(design_budget)))
    return w, tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.005, help="std of the Gaussian noise on each loss")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "results" / "repetition_sim"))
    args = parser.parse_args(argv)
    settings = dict(list(SETTINGS.items())[:1]) if args.quick else SETTINGS
    seeds = 1 if args.quick else args.seeds
    rows, t0 = [], time.time()
    for setting, (r_star, unique, ratios, names) in settings.items():
        truth = truth_law(r_star, unique)
        strat = total_at_target(truth, np.full(3, 1 / 3))
        w_opt = truth_optimum(truth)
        best = total_at_target(truth, w_opt)
        for ratio in ratios:
            for name, variant in VARIANTS.items():
                if names is not None and name not in names:
                    continue
                recovered, weights = [], []
                for seed in range(seeds):
                    w, tokens = one_case(truth, unique, variant, TARGET / ratio, args.noise, seed)
                    recovered.append((strat - total_at_target(truth, w)) / (strat - best))
                    weights.append(w)
                rec = np.array(recovered)
                rows.append({"setting": setting, "ratio": ratio, "variant": name,
                             "recovered_mean": float(rec.mean()),
                             "recovered_se": float(rec.std(ddof=1) / np.sqrt(len(rec))) if len(rec) > 1 else None,
                             "recovered": rec.tolist(), "weights_mean": np.mean(weights, 0).tolist(),
                             "run_tokens_over_target": tokens / TARGET,
                             "optimum": w_opt.tolist(), "gap_strat_nats": strat - best})
                print(f"{setting:18s} T/{ratio:<3d} {name:30s} recovered {rec.mean():6.2f} "
                      f"{np.round(rec, 2)} w={np.round(np.mean(weights, 0), 3)} opt={np.round(w_opt, 3)} "
                      f"({time.time() - t0:.0f}s)", flush=True)
                if not args.quick:
                    write_results(Path(args.out), rows, args.noise, seeds)
    return 0


def write_results(out: Path, rows: list, noise: float, seeds: int) -> None:
    """results/repetition_sim.json and .md, rewritten after every row (a killed run keeps its rows)."""
    from mixjax.io import write_json_atomic, write_text_atomic

    write_json_atomic(out.with_suffix(".json"), {"target": TARGET, "noise": noise, "seeds": seeds, "rows": rows})
    lines = ["<!-- made by `python experiments/repetition_sim.py`; edit the script, not this file -->",
             f"Simulated runs (truth: li2025-repeat, see the script), target T = {TARGET:,.0f} tokens, loss noise "
             f"{noise:g} nats, {seeds} seeds. Gap recovered = (L_strat - L) / (L_strat - L_opt) at T under the truth.",
             "", "| setting | runs sized for | variant | gap recovered (mean ± se) | per seed | weights (mean) | "
             "truth's optimum | stratified's gap (nats) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        se = f" ± {r['recovered_se']:.2f}" if r["recovered_se"] is not None else ""
        lines.append(f"| {r['setting']} | T/{r['ratio']} | {r['variant']} | {r['recovered_mean']:.2f}{se} | "
                     f"{', '.join(f'{x:.2f}' for x in r['recovered'])} | "
                     f"{', '.join(f'{x:.2f}' for x in r['weights_mean'])} | "
                     f"{', '.join(f'{x:.2f}' for x in r['optimum'])} | {r['gap_strat_nats']:.4f} |")
    lines += ["", NOTES]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")


NOTES = """Reading. Runs at T/16 and T/4 never repeat math on all the data (its 2M tokens are 5% of T; the
largest run uses 300k-1.2M), so nothing in them says R*: li2025-repeat's fitted R* stays at its start
(15, Muennighoff's), the same as fixing it; knowing the unique tokens alone lifts li2025 only a little
(-0.54 -> 0.16 at T/16, -0.87 -> -0.02 at T/4). Repetition-matched runs (target_budget) make math repeat in the runs
as at T; fitted with li2025-repeat, which sees each run's cut, R* is identified and the law recovers
0.72 (T/16) and 0.81 (T/4) of stratified's gap. The same runs fitted with the li2025 law are a
disaster (-20, -3.8): it extrapolates in tokens while the runs hold the passes fixed, so math's
saturation reads as a small data exponent and math is starved at T. Observations along each run
(along_run=4) pin the token exponent: alone they do not fix the repetition blind spot, with the
repeat law they lift it to 0.50-0.54 (and to 1.00 where nothing repeats); the simulation has no
learning-rate schedule, so it credits them fully (on real runs the constant-rate points are not
cosine-final points). The design at two sizes (scales=1,0.25, 1.25x the tokens) did not help."""


if __name__ == "__main__":
    sys.exit(main())
