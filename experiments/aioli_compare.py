"""The Aioli paper's comparison at laptop scale: every method against stratified sampling on several
combinations of the bundled domains (three pairs and all three), over several seeds.

Metric (as in the paper): average validation perplexity over the domains of a setting, mean of
exp(loss). The table gives each method's difference to stratified in each setting (negative is
better; mean ± std over seeds) and in how many settings it beats stratified.

The three-domain setting shares its runs with experiments/li2025_grid.py (same work directory,
budget and seeds), so running both costs the pairs only.

    python experiments/aioli_compare.py            # ~40 min on 2 CPU cores after li2025_grid.py
    python experiments/aioli_compare.py --quick    # a minute: checks the script end to end
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = ("stratified", "grid", "dml", "li2025", "regmix", "skillit", "doremi", "doge", "aioli")
SETTINGS = (("dialogue", "math"), ("dialogue", "code"), ("math", "code"), ("dialogue", "math", "code"))


def perplexity(val_loss: dict) -> float:
    """Average validation perplexity over the domains."""
    return float(np.mean([np.exp(v) for v in val_loss.values()]))


def setting_name(domains) -> str:
    return "+".join(domains)


def summarise(results: dict) -> dict:
    """results[setting][seed][method] -> per setting and method: perplexity, difference to
    stratified (mean, std over seeds), whether the mean difference is below zero."""
    table = {}
    for setting, per_seed in results.items():
        methods = [m for m in METHODS if all(m in by_m for by_m in per_seed.values())]
        rows = {}
        for m in methods:
            ppl = [perplexity(by_m[m]["val_loss"]) for by_m in per_seed.values()]
            diff = [perplexity(by_m[m]["val_loss"]) - perplexity(by_m["stratified"]["val_loss"])
                    for by_m in per_seed.values()]
            rows[m] = {"perplexity": common.mean_std(ppl), "diff": common.mean_std(diff),
                       "diff_per_seed": diff, "beats": bool(np.mean(diff) < 0),
                       "weights": {d: float(np.mean([by_m[m]["weights"][d] for by_m in per_seed.values()]))
                                   for d in next(iter(per_seed.values()))[m]["weights"]},
                       "runs": next(iter(per_seed.values()))[m]["runs"]}
        table[setting] = rows
    return table


def markdown(table: dict, budgets: dict, n_seeds: int) -> str:
    settings = list(table)
    methods = [m for m in METHODS if all(m in table[s] for s in settings)]
    lines = [f"Average validation perplexity over each setting's domains; tiny preset fine-tuned from the cached "
             f"base model; {n_seeds} seed(s); budgets: "
             + ", ".join(f"{s} {budgets[s]:,}" for s in settings) + " tokens.", "",
             "Difference to stratified (negative = better; mean ± std over seeds):", "",
             "| method | " + " | ".join(settings) + " | beats stratified |", "|---" * (len(settings) + 2) + "|"]
    strat = table[settings[0]].get("stratified")
    if strat is not None:
        lines.append("| stratified (perplexity) | " + " | ".join(
            f"{table[s]['stratified']['perplexity'][0]:.3f}" for s in settings) + " | - |")
    for m in methods:
        if m == "stratified":
            continue
        cells = [f"{table[s][m]['diff'][0]:+.3f} ± {table[s][m]['diff'][1]:.3f}" for s in settings]
        wins = sum(table[s][m]["beats"] for s in settings)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {wins}/{len(settings)} |")
    lines += ["", "Runs each method trained per setting and seed (the final run included): "
              + ", ".join(f"{m} {table[settings[0]][m]['runs']}" for m in methods) + " (first setting)."]
    return "\n".join(lines)


def figure(table: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(table)
    methods = [m for m in METHODS if m != "stratified" and all(m in table[s] for s in settings)]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(settings), 1)
    x = np.arange(len(methods))
    for i, s in enumerate(settings):
        ax.bar(x + i * width, [table[s][m]["diff"][0] for m in methods], width,
               yerr=[table[s][m]["diff"][1] for m in methods], capsize=2, label=s)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x + width * (len(settings) - 1) / 2, methods, rotation=30)
    ax.set_ylabel("perplexity - stratified's")
    ax.set_title("Each method against stratified (below 0 = better)")
    ax.legend(fontsize=8, frameon=False)
    return {"vs_stratified": fig}


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.splitlines()[0], "li2025_grid")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (stratified is always run)")
    p.add_argument("--settings", default=None,
                   help="comma-separated settings to run, e.g. dialogue+math (default: all four)")
    p.add_argument("--pair-budget", type=int, default=None,
                   help="tokens per run for the two-domain settings (default: the budget)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    return common.exit_code("aioli_compare.py", lambda: run(args, argv))


def run(args, argv) -> int:
    scale = common.scale_from(args)
    methods = common.parse_methods(args.methods, "stratified")
    started = time.perf_counter()
    work = Path(args.work)
    results, budgets = {}, {}
    chosen = args.settings.split(",") if args.settings else [setting_name(s) for s in SETTINGS]
    if args.data and args.settings:
        from mixjax.errors import MixjaxError
        raise MixjaxError("--settings picks bundled domains; with --data the one setting is the data's domains")
    for domains in SETTINGS if not args.data else [None]:
        name = setting_name(domains) if domains else "+".join(common.user_data(args.data, scale.budget).domains)
        if domains and name not in chosen:
            continue
        three = domains is None or len(domains) == 3
        data, config = common.setup(work, scale, domains=domains, progress=not args.quiet,
                                    data_name="data" if three else f"data_{name}", data_dir=args.data,
                                    init=args.init)
        budget = scale.budget if three or not args.pair_budget else args.pair_budget
        budgets[name] = budget
        results[name] = {}
        for seed in scale.seeds:
            results[name][seed] = {}
            for m in methods:
                t0 = time.perf_counter()
                out = work / f"seed{seed}" / m if three else work / name / f"seed{seed}" / m
                r = common.run_method(m, data, budget, config, seed, out, scale)
                results[name][seed][m] = r
                common.log(f"{name} seed {seed} {m:10s} perplexity {perplexity(r['val_loss']):.3f}  "
                           f"({r['runs']} runs, {time.perf_counter() - t0:.0f} s)")
    table = summarise(results)
    md = markdown(table, budgets, len(scale.seeds))
    minutes = common.method_minutes(r for per_seed in results.values() for by_m in per_seed.values()
                                    for r in by_m.values())
    md += (f"\n\nTraining all of it took {minutes:.0f} min of wall time (every setting, method and seed, "
           "on 2 CPU cores shared with other jobs; the three-domain runs are li2025_grid.py's).")
    print(md)
    payload = {"scale": common.dataclasses.asdict(scale), "budgets": budgets, "table": table,
               "results": {s: {str(k): v for k, v in r.items()} for s, r in results.items()}}
    name = "aioli_compare_quick" if args.quick else "aioli_compare"
    common.write_results(Path(args.results), name, payload, md, figure(table), time.perf_counter() - started,
                         command=common.command_line(__file__, argv))
    common.log(f"results in {args.results}/{name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
