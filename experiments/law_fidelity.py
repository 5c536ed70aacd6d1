"""Law fidelity (the Aioli paper's central diagnostic): fit every law to the runs each method trains
and predict the grid's mixtures, which none of them trained.

Per seed, on the bundled domains (or --data): the 1/8 grid at the budget (the truth), and three
sets of training runs: li2025's 13 perturbation runs (final losses), DML's 2K + 2 Dirichlet runs at
the budget and RegMix's 4K + 4 small Dirichlet runs. Each of the four laws (li2025,
li2025-pairwise, loglinear, linear) is fitted to each set (least squares, every run's loss on
every domain) and predicts the grid: per-domain and total-loss RMSE, Spearman's rank correlation
of predicted against measured total loss over the grid's mixtures, and the regret of the law's
own choice among the grid's mixtures (the one it predicts lowest; measured total loss minus the
best), mean and standard error over seeds.

    python experiments/law_fidelity.py --quiet     # 3 seeds; trains only what --work lacks
    python experiments/law_fidelity.py --quick     # a minute: checks the script end to end

The default --work is li2025_grid's: the grid, li2025's runs (adaptive_real.py's fixed design)
and the base model are shared; DML's and RegMix's runs are trained once and cached.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LAWS = ("li2025", "li2025-pairwise", "loglinear", "linear")
TRAINING_SETS = {"li2025 runs": ("li2025", {"perturbation_evals": 0}, "li2025-final-loss"),
                 "dml runs": ("dml", {}, "dml"),
                 "regmix runs": ("regmix", {}, "regmix")}


def sweep_observations(out: Path):
    from mixjax.observations import read_csv

    return read_csv(out / "sweep" / "observations.csv")


def fidelity(fitted, grid_obs) -> dict:
    """RMSE per domain and of the total, Spearman of the totals, and the regret of the law's own
    choice among the grid's mixtures."""
    from mixjax import validation

    report = validation.validate(fitted, grid_obs)
    measured = np.array([sum(r["measured"].values()) for r in report["runs"]])  # the grid measures every domain
    predicted = np.array([sum(r["predicted"].values()) for r in report["runs"]])
    chosen = int(np.argmin(predicted))
    return {"rmse": report["rmse"], "spearman": report["spearman_total"],
            "regret": float(measured[chosen] - measured.min()), "chosen": report["runs"][chosen]["run"]}


def fit_law(law_name: str, observations):
    """The law fitted to the runs, or None when they cannot identify it (the fit says so)."""
    from mixjax import laws
    from mixjax.errors import MixjaxError
    from mixjax.fit import FitOptions, fit

    try:
        fitted = fit(laws.get(law_name), observations, options=FitOptions(n_bootstrap=0, leave_one_out=False))
    except MixjaxError:
        return None
    return None if fitted.diagnostics.get("under_determined") else fitted


def summarise(per_seed: dict, domains: list[str]) -> list[dict]:
    rows = []
    for set_name in TRAINING_SETS:
        for law in LAWS:
            cells = [per_seed[s][set_name][law] for s in per_seed]
            ok = [c for c in cells if c is not None]
            row = {"runs": set_name, "law": law, "fitted": f"{len(ok)}/{len(cells)}"}
            if ok:
                for key, values in (("rmse_total", [c["rmse"]["total"] for c in ok]),
                                    ("spearman", [c["spearman"] for c in ok]),
                                    ("regret", [c["regret"] for c in ok])):
                    v = np.asarray(values, np.float64)
                    row[key] = (float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0)
                row["rmse_domain"] = {d: float(np.mean([c["rmse"][d] for c in ok])) for d in domains}
                row["rmse_total_median"] = float(np.median([c["rmse"]["total"] for c in ok]))  # a blow-up shows
            rows.append(row)
    return rows


def markdown(rows, domains, scale, n_seeds, n_runs: dict) -> str:
    out = ["# Law fidelity: each law fitted to each method's runs, predicting the grid\n",
           f"Domains {', '.join(domains)}; the 1/8 grid ({n_runs['grid']} mixtures at {scale.budget:,} tokens) is "
           f"the truth; {n_seeds} seed(s), mean ± standard error. Training runs: li2025's perturbation design "
           f"({n_runs['li2025 runs']} runs), DML's Dirichlet runs at the budget ({n_runs['dml runs']}), RegMix's "
           f"small Dirichlet runs ({n_runs['regmix runs']}). RMSE in nats of validation loss; Spearman: rank "
           "correlation of predicted and measured total loss over the grid's mixtures; regret: measured total "
           "loss of the grid mixture the law predicts best, minus the grid's best. 'fitted' counts the seeds "
           "where the runs identify the law; the median total-loss RMSE over seeds shows a law that blows up on one "
           "seed (a mean of 1e8 is one extrapolation gone wrong).\n",
           "| training runs | law | fitted | total-loss RMSE | median | " + " | ".join(f"{d} RMSE" for d in domains)
           + " | Spearman | regret of its choice |",
           "|---|---|---|---|---|" + "---|" * len(domains) + "---|---|"]
    for r in rows:
        if "rmse_total" not in r:
            out.append(f"| {r['runs']} | {r['law']} | {r['fitted']} | - | - |" + " - |" * len(domains) + " - | - |")
            continue
        dom = " | ".join(f"{r['rmse_domain'][d]:.4g}" for d in domains)
        out.append(f"| {r['runs']} | {r['law']} | {r['fitted']} | {r['rmse_total'][0]:.4g} ± {r['rmse_total'][1]:.4g} "
                   f"| {r['rmse_total_median']:.4f} | {dom} | {r['spearman'][0]:+.2f} ± {r['spearman'][1]:.2f} "
                   f"| {r['regret'][0]:.4f} ± {r['regret'][1]:.4f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.split("\n")[0], "li2025_grid")
    args = p.parse_args(argv)
    return common.exit_code("law_fidelity.py", lambda: run(args, argv))


def run(args, argv) -> int:
    scale = common.scale_from(args)
    started = time.perf_counter()
    work = Path(args.work)
    data, config = common.setup(work, scale, progress=not args.quiet, data_dir=args.data, init=args.init)
    domains = list(data.domains)
    per_seed, n_runs, spent = {}, {}, []
    for seed in scale.seeds:
        cfg = common.dataclasses.replace(config, seed=seed, progress=False)
        grid_result = common.method_result("grid", data, scale.budget, cfg, work / f"seed{seed}" / "grid")
        spent.append(grid_result)
        grid_obs = sweep_observations(work / f"seed{seed}" / "grid")
        n_runs["grid"] = len(grid_obs.runs)
        per_seed[seed] = {}
        for set_name, (method, options, cache) in TRAINING_SETS.items():
            out = work / f"seed{seed}" / cache
            spent.append(common.method_result(method, data, scale.budget, cfg, out, options))
            obs = sweep_observations(out)
            n_runs[set_name] = len(obs.runs)
            per_seed[seed][set_name] = {}
            for law in LAWS:
                fitted = fit_law(law, obs)
                per_seed[seed][set_name][law] = None if fitted is None else fidelity(fitted, grid_obs)
                c = per_seed[seed][set_name][law]
                common.log(f"seed {seed} {set_name:12s} {law:16s} " + ("not identified" if c is None else
                           f"total RMSE {c['rmse']['total']:.4f}  Spearman {c['spearman']:+.2f}  regret {c['regret']:.4f}"))
    rows = summarise(per_seed, domains)
    md = markdown(rows, domains, scale, len(scale.seeds), n_runs)
    md += (f"\n\nTraining all of it took {common.method_minutes(spent):.0f} min of wall time (cached runs count the "
           "time they took when trained; 2 CPU cores).")
    print(md)
    payload = {"scale": common.dataclasses.asdict(scale), "domains": domains, "rows": rows,
               "per_seed": {str(s): v for s, v in per_seed.items()}, "n_runs": n_runs}
    name = "law_fidelity" + (f"-{Path(args.data).name}" if args.data else "")
    return common.publish(args, name, payload, md, {}, started, __file__, argv)


if __name__ == "__main__":
    sys.exit(main())
