"""li2025's optimal weights against the training budget, from one fit, checked by training.

Li et al. fit their law once, on small perturbation runs, and read the optimal mixture off it at
any budget: the weights move with the budget and settle as it grows. This experiment fits the law
once on the bundled domains (1 + 4K perturbation runs, one seed), sweeps the optimum over budgets
from 1e5 to 1e8 tokens (with bootstrap intervals), and then trains at two budgets: the weights
optimised for that budget, stratified weights, and the weights optimised for the *other* budget
(do weights that move with the budget matter?), over several seeds, with the law's predictions
beside the measured losses.

    python experiments/budget_sweep.py            # ~15 min on 2 CPU cores; reruns resume from --work
    python experiments/budget_sweep.py --quick    # a minute: checks the script end to end
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mixjax.errors import MixjaxError  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What this experiment adds to the common Scale."""

    perturb_tokens_per_domain: int = 25_000      # the perturbation design's base run: n per domain
    check_budgets: tuple = (150_000, 600_000)    # budgets trained at to check the law's weights
    sweep_range: tuple = (1e5, 1e8)              # budgets the optimum is read at (log-spaced)
    sweep_points: int = 31
    n_bootstrap: int = 40


QUICK = Sweep(perturb_tokens_per_domain=2048, check_budgets=(8192, 16_384), sweep_points=13, n_bootstrap=8)
ARMS = ("optimised", "stratified", "other budget's optimum")


def sweep_budgets(sweep: Sweep) -> np.ndarray:
    grid = np.geomspace(*sweep.sweep_range, sweep.sweep_points)
    return np.unique(np.concatenate([np.round(grid), np.asarray(sweep.check_budgets, np.float64)]))


def fit_once(data, config, sweep: Sweep, work: Path):
    """The perturbation runs (one seed), the law fitted to every run's loss on every domain, and its
    optimum at every budget of the sweep. Returns (observations, fitted law, WeightsResult)."""
    from mixjax import laws
    from mixjax.fit import FitOptions, fit
    from mixjax.io import write_json_atomic
    from mixjax.methods.offline import Li2025
    from mixjax.runners.sweep import run_sweep
    from mixjax.optimize import optimize

    k = len(data.domains)
    design = Li2025(base_fraction=1.0)  # the "budget" below is then the base run: n tokens per domain
    common.log(f"li2025 perturbation runs: {sweep.perturb_tokens_per_domain:,} tokens per domain, "
               "each domain x 0.25, 0.5, 2, 3")
    _, obs = run_sweep(design, "li2025", {"base_fraction": 1.0}, data, sweep.perturb_tokens_per_domain * k,
                       work / "sweep", dataclasses.replace(config, progress=False), log=common.log)
    budgets = sweep_budgets(sweep)
    fitted = fit(laws.get("li2025"), obs, token_unit=1e6, budgets=list(budgets),
                 options=FitOptions(n_bootstrap=sweep.n_bootstrap))
    write_json_atomic(work / "law.json", json.loads(json.dumps(fitted.to_json(), default=float)))
    result = optimize(fitted, list(budgets))
    write_json_atomic(work / "weights.json", result.to_json())
    return obs, fitted, result


def summarise_checks(runs: dict, fitted, domains: list[str]) -> dict:
    """runs[budget][arm][seed] -> per budget and arm: weights, the law's losses, measured mean/std,
    and paired differences (same seeds) against the optimised arm."""
    out = {}
    for budget, by_arm in runs.items():
        rows = {}
        for arm, by_seed in by_arm.items():
            weights = next(iter(by_seed.values()))["weights"]
            totals = [sum(r["val_loss"][d] for d in domains) for r in by_seed.values()]
            losses = np.array([[r["val_loss"][d] for d in domains] for r in by_seed.values()])
            predicted = common.law_losses(fitted, weights, budget)
            mean, std = common.mean_std(totals)
            rows[arm] = {"weights": weights, "predicted_loss": predicted,
                         "predicted_total": float(sum(predicted.values())),
                         "val_loss_mean": dict(zip(domains, losses.mean(0).tolist())),
                         "total_mean": mean, "total_std": std, "totals": totals,
                         "seeds": {str(s): r for s, r in by_seed.items()}}
        diffs = {}
        for arm in rows:
            if arm == "optimised":
                continue
            d = common.paired_difference(rows["optimised"]["totals"], rows[arm]["totals"])
            d["predicted"] = rows["optimised"]["predicted_total"] - rows[arm]["predicted_total"]
            diffs[arm] = d
        out[str(budget)] = {"budget": int(budget), "arms": rows, "optimised_minus": diffs}
    return out


def markdown(scale, sweep: Sweep, domains, obs, fitted, result, checks, fit_range, compute) -> str:
    diag = fitted.diagnostics
    boot = {int(e["budget"]): e for e in diag.get("bootstrap", {}).get("results", [])}
    loo = {d: v.get("rmse") for d, v in diag.get("leave_one_out", {}).get("domains", {}).items()}
    n_seeds = len(scale.seeds)
    lines = [f"{len(domains)} bundled domains ({', '.join(domains)}), tiny preset fine-tuned from the cached base "
             f"model, batch {scale.batch_size} x {scale.seq_len}. **One fit**: li2025's {len(obs.runs)} perturbation "
             f"runs ({sweep.perturb_tokens_per_domain:,} tokens per domain in the base run; runs of "
             f"{fit_range[0]:,.0f}-{fit_range[1]:,.0f} tokens, seed 0), the law fitted to every run's loss on every "
             "domain.", "",
             "Fit: " + ", ".join(f"{d} R^2 {v['r2']:.3f} (leave-one-run-out RMSE {loo.get(d) or float('nan'):.4f})"
                                 for d, v in diag["domains"].items()) + f"; {diag['message']}.", "",
             "### Optimal weights against budget (the law's; 90% bootstrap interval over resampled runs)", "",
             "| budget (tokens) | " + " | ".join(domains) + " | predicted total loss |",
             "|---" * (len(domains) + 2) + "|"]
    near = {int(np.argmin(np.abs(np.log10(result.budgets) - t))) for t in np.arange(0, 12, 0.5)}
    show = [b for i, b in enumerate(result.budgets) if i in near or int(b) in sweep.check_budgets]
    for b in show:
        i = int(np.where(result.budgets == b)[0][0])
        e = boot.get(int(b))
        cells = [f"{result.weights[i, j]:.3f}"
                 + (f" ({e['weights_p05'][d]:.2f}-{e['weights_p95'][d]:.2f})" if e else "")
                 for j, d in enumerate(domains)]
        lines.append(f"| {b:,.0f} | " + " | ".join(cells) + f" | {result.predicted_loss[i].sum():.4f} |")
    lines += ["", f"### Check: trained at {' and '.join(f'{b:,}' for b in sweep.check_budgets)} tokens "
              f"({n_seeds} seed(s); measured mean ± std over seeds; the law's prediction beside)", "",
              "| budget | weights | " + " | ".join(f"w {d}" for d in domains) + " | "
              + " | ".join(f"{d} loss" for d in domains) + " | total (measured) | total (law) | measured - law |",
              "|---" * (2 * len(domains) + 5) + "|"]
    for key, c in checks.items():
        for arm, r in c["arms"].items():
            lines.append(f"| {c['budget']:,} | {arm} | " + " | ".join(f"{r['weights'][d]:.3f}" for d in domains) + " | "
                         + " | ".join(f"{r['val_loss_mean'][d]:.4f}" for d in domains)
                         + f" | {r['total_mean']:.4f} ± {r['total_std']:.4f} | {r['predicted_total']:.4f}"
                         + f" | {r['total_mean'] - r['predicted_total']:+.4f} |")
    lines += ["", "### Optimised minus the other arms (total validation loss, paired by seed)", "",
              "| budget | optimised minus | measured (mean ± s.e.) | per seed | law's prediction |",
              "|---|---|---|---|---|"]
    for key, c in checks.items():
        for arm, d in c["optimised_minus"].items():
            se = f" ± {d['se']:.4f}" if d["se"] is not None else " (one seed)"
            lines.append(f"| {c['budget']:,} | {arm} | {d['mean']:+.4f}{se} | "
                         + ", ".join(f"{x:+.4f}" for x in d["per_seed"]) + f" | {d['predicted']:+.4f} |")
    lines += ["", "### Reading", ""] + [f"- {s}" for s in reading(checks, sweep)]
    lines += ["", f"Training: {compute['runs']} runs, {compute['tokens']:,} tokens, {compute['seconds'] / 60:.1f} min "
              "(the runs' own timings; a rerun reuses finished runs from --work)."]
    return "\n".join(lines)


def reading(checks: dict, sweep: Sweep) -> list[str]:
    """Plain sentences from the numbers: what won, by how much against noise, and the law's error."""
    out = []
    first, last = (checks[str(b)] for b in (sweep.check_budgets[0], sweep.check_budgets[-1]))
    w0, w1 = first["arms"]["optimised"]["weights"], last["arms"]["optimised"]["weights"]
    shift = 0.5 * sum(abs(w0[d] - w1[d]) for d in w0)
    out.append(f"The law's optimum moves by {shift:.3f} (total variation) between {first['budget']:,} and "
               f"{last['budget']:,} tokens; it predicts that using the other budget's weights costs "
               + " and ".join(f"{-c['optimised_minus'][ARMS[2]]['predicted']:.4f} nats at {c['budget']:,}"
                              for c in (first, last)) + ".")
    for c in (first, last):
        for arm, d in c["optimised_minus"].items():
            out.append(common.verdict(d, f"At {c['budget']:,} tokens, optimised minus {arm}")
                       + f" (the law predicted {d['predicted']:+.4f}).")
        errors = [abs(r["total_mean"] - r["predicted_total"]) for r in c["arms"].values()]
        gaps = [abs(d["predicted"]) for d in c["optimised_minus"].values()]
        out.append(f"At {c['budget']:,} tokens the law misses the measured total loss by up to {max(errors):.4f} "
                   f"nats, {'more' if max(errors) > max(gaps) else 'less'} than the largest difference it predicts "
                   f"between these mixtures ({max(gaps):.4f}).")
    wins = [d["mean"] < -d["t95"] * d["se"] for c in checks.values() for d in c["optimised_minus"].values()
            if d["se"] is not None]
    if wins and not all(wins):
        out.append("So the optimised weights do not beat every alternative here; the table above is what was "
                   "measured, not tuned.")
    return out


def figures(domains, result, fitted, checks, fit_range, sweep: Sweep) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    boot = {int(e["budget"]): e for e in fitted.diagnostics.get("bootstrap", {}).get("results", [])}
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for j, d in enumerate(domains):
        line = ax.plot(result.budgets, result.weights[:, j], label=d)[0]
        if boot:
            lo = [boot[int(b)]["weights_p05"][d] for b in result.budgets]
            hi = [boot[int(b)]["weights_p95"][d] for b in result.budgets]
            ax.fill_between(result.budgets, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    for a in (ax, ax2):
        a.axvspan(*fit_range, color="0.85", zorder=0)
        for b in sweep.check_budgets:
            a.axvline(b, color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylabel("optimal weight (band: 90% bootstrap)")
    ax.set_title("li2025 optimum vs budget (grey: budgets of the fitted runs; dashed: checked)")
    ax.legend(fontsize=8)
    strat = np.full(len(domains), 1 / len(domains))
    strat_total = [sum(common.law_losses(fitted, dict(zip(domains, strat)), b).values()) for b in result.budgets]
    ax2.plot(result.budgets, result.predicted_loss.sum(1), label="law: optimised")
    ax2.plot(result.budgets, strat_total, ls=":", label="law: stratified")
    markers = dict(zip(ARMS, "os^"))
    for i, c in enumerate(checks.values()):
        for arm, r in c["arms"].items():
            ax2.errorbar(c["budget"], r["total_mean"], yerr=r["total_std"], fmt=markers[arm], ms=5, capsize=3,
                         color=f"C{list(markers).index(arm) + 2}", label=f"measured: {arm}" if i == 0 else None)
    ax2.set_xscale("log")
    ax2.set_xlabel("budget (tokens)")
    ax2.set_ylabel("total validation loss")
    ax2.legend(fontsize=7)
    fig.tight_layout()

    fig2, axes = plt.subplots(1, len(checks), figsize=(4.5 * len(checks), 3.8), squeeze=False)
    for a, c in zip(axes[0], checks.values()):
        for x, (arm, r) in enumerate(c["arms"].items()):
            a.scatter(np.full(len(r["totals"]), x), r["totals"], color="k", s=12, zorder=3,
                      label="measured (one per seed)" if x == 0 else None)
            a.errorbar(x + 0.12, r["total_mean"], yerr=r["total_std"], fmt="o", color="C0", capsize=3,
                       label="mean ± std" if x == 0 else None)
            a.scatter(x - 0.12, r["predicted_total"], marker="x", color="C3", s=40, label="law" if x == 0 else None)
        a.set_xticks(range(len(c["arms"])), list(c["arms"]), rotation=15)
        a.set_title(f"{c['budget']:,} tokens")
        a.set_ylabel("total validation loss")
    axes[0, 0].legend(fontsize=7)
    fig2.tight_layout()
    return {"weights": fig, "check": fig2}


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.splitlines()[0], "budget_sweep")
    p.add_argument("--check-budgets", default=None, metavar="N,N",
                   help="the two budgets (tokens) to train at (default 150000,600000; quick 8192,16384)")
    p.add_argument("--perturb-tokens", type=int, default=None, metavar="N",
                   help="tokens per domain in the perturbation base run (default 25000; quick 2048)")
    args = p.parse_args(argv)
    return common.exit_code("budget_sweep.py", lambda: run(args))


def run(args) -> int:
    if args.budget:
        raise MixjaxError("--budget: not used here; pass --check-budgets (and --perturb-tokens)")
    scale = common.scale_from(args)
    sweep = QUICK if args.quick else Sweep()
    if args.check_budgets:
        try:
            budgets = tuple(int(float(x)) for x in args.check_budgets.split(","))
        except ValueError:
            raise MixjaxError("--check-budgets: expected two numbers like 150000,600000, "
                              f"got {args.check_budgets!r}") from None
        if len(budgets) != 2 or min(budgets) <= 0 or budgets[0] == budgets[1]:
            raise MixjaxError(f"--check-budgets: expected two different positive budgets, got {args.check_budgets!r}")
        sweep = dataclasses.replace(sweep, check_budgets=budgets)
    if args.perturb_tokens is not None:
        if args.perturb_tokens <= 0:
            raise MixjaxError("--perturb-tokens: must be positive")
        sweep = dataclasses.replace(sweep, perturb_tokens_per_domain=args.perturb_tokens)
    started = time.perf_counter()
    work = Path(args.work)
    data, config = common.setup(work, scale, progress=not args.quiet, data_dir=args.data, init=args.init)
    domains = list(data.domains)
    obs, fitted, result = fit_once(data, config, sweep, work)
    totals = obs.tokens.sum(1)
    fit_range = (float(totals.min()), float(totals.max()))
    from mixjax.report import table
    print(table(result))

    optimum = {int(b): dict(zip(domains, result.weights[i].tolist())) for i, b in enumerate(result.budgets)}
    stratified = {d: 1 / len(domains) for d in domains}
    runs = {}
    for b, other in (sweep.check_budgets, sweep.check_budgets[::-1]):
        arms = {"optimised": optimum[b], "stratified": stratified, ARMS[2]: optimum[other]}
        runs[b] = common.train_arms(data, config, arms, b, scale.seeds, work / "check" / f"b{b}", root=work)
    checks = summarise_checks(runs, fitted, domains)
    compute = common.training_compute([work / "sweep" / "runs" / name for name in obs.runs]
                                      + [work / r["run"] for by_arm in runs.values() for by_seed in by_arm.values()
                                         for r in by_seed.values()])
    md = markdown(scale, sweep, domains, obs, fitted, result, checks, fit_range, compute)
    print(md)
    diag = fitted.diagnostics
    payload = {"scale": dataclasses.asdict(scale), "sweep": dataclasses.asdict(sweep), "domains": domains,
               "work": str(work),
               "fit": {"runs": obs.runs, "tokens": obs.tokens.tolist(), "losses": obs.losses.tolist(),
                       "r2": {d: v["r2"] for d, v in diag["domains"].items()},
                       "leave_one_out": diag.get("leave_one_out"), "message": diag["message"],
                       "params": {k: np.asarray(v).tolist() for k, v in fitted.params._asdict().items()}},
               "optimum": result.to_json()["results"], "bootstrap": diag.get("bootstrap"), "checks": checks,
               "training": compute}
    name = "budget_sweep_quick" if args.quick else "budget_sweep"
    common.write_results(Path(args.results), name, payload, md,
                         figures(domains, result, fitted, checks, fit_range, sweep), time.perf_counter() - started)
    common.log(f"results in {args.results}/{name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
