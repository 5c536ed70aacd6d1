"""li2025's adaptive design on real runs: does `mix --method li2025 --adaptive` recover as much of
the stratified-to-grid-best gap as the fixed 1 + 4K design, with fewer runs?

Per seed, on the bundled domains (or --data): the 1/8 grid at the budget (the ground truth: its
best mixture), stratified, li2025 with its fixed design, and li2025 --adaptive (default tolerance
0.02, at most 1 + 4K runs). Both li2025 arms record each perturbation run's final loss
(--perturbation-evals 0: the best-of-10 evaluations cost ~10x the run at this scale). For each arm:
total validation loss, regret against the grid's best, the share of stratified's regret it
recovers (1 - regret / stratified's regret; paired by seed), runs and tokens spent.

    python experiments/adaptive_real.py --quiet          # 3 seeds; runs cached in --work
    python experiments/adaptive_real.py --quick          # a minute: checks the script end to end

The default --work is li2025_grid's, so the base model, data, grid and stratified runs are shared
with that experiment (same settings, same caches).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ARMS = {"stratified": ("stratified", {}),
        "li2025 fixed": ("li2025", {"perturbation_evals": 0}),
        "li2025 adaptive": ("li2025", {"perturbation_evals": 0, "adaptive": True})}
CACHE = {"stratified": "stratified", "li2025 fixed": "li2025-final-loss", "li2025 adaptive": "li2025-adaptive"}


def gap_table(per_seed: dict, domains: list[str]) -> dict:
    """Per arm: regret and share of stratified's regret recovered, mean and standard error over
    seeds (paired: each seed's grid and stratified), and runs and tokens (mean over seeds)."""
    rows = {}
    for arm in ["grid best", *ARMS]:
        regret, strat, runs, tokens = [], [], [], []
        for by_arm in per_seed.values():
            grid = by_arm["grid"]["grid"]
            best = min(sum(g["val_loss"][d] for d in domains) for g in grid)
            strat.append(sum(by_arm["stratified"]["val_loss"][d] for d in domains) - best)
            r = by_arm["grid"] if arm == "grid best" else by_arm[arm]
            regret.append(sum(r["val_loss"][d] for d in domains) - best)
            runs.append(r["runs"])
            tokens.append(r["tokens"])
        share = common.gap_recovered(regret, strat)["per_seed"]
        rows[arm] = {"regret": _mean_se(regret), "gap_recovered": _mean_se(share), "regret_per_seed": regret,
                     "gap_recovered_per_seed": share, "runs": float(np.mean(runs)),
                     "runs_per_seed": runs, "tokens": float(np.mean(tokens))}
    return rows


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def markdown(rows: dict, domains, scale, per_seed: dict) -> str:
    out = [f"# li2025 --adaptive against the fixed design on real runs\n",
           f"Domains {', '.join(domains)}; {scale.budget:,} tokens per final run; seeds "
           f"{', '.join(str(s) for s in per_seed)}; the 1/8 grid's best mixture is the truth. Gap recovered "
           "= 1 - regret / stratified's regret, per seed (mean ± standard error); regret = total validation "
           "loss minus the grid's best, in nats. Runs: every run the arm trained, the final one included.\n",
           "| arm | gap recovered | regret | runs (mean; per seed) | tokens / budget |", "|---|---|---|---|---|"]
    for arm, r in rows.items():
        g, reg = r["gap_recovered"], r["regret"]
        per = "/".join(str(int(x)) for x in r["runs_per_seed"])
        out.append(f"| {arm} | {g[0]:+.2f} ± {g[1]:.2f} | {reg[0]:+.4f} ± {reg[1]:.4f} | {r['runs']:.1f} ({per}) "
                   f"| {r['tokens'] / scale.budget:.2f} |")
    regrets = rows["stratified"]["regret_per_seed"]
    gaps = ", ".join(f"{x:.4f}" for x in regrets)
    counted = sum(1 for x in regrets if x > 0)
    out.append(f"\nStratified's regret per seed (the gap to recover): {gaps}. Gap recovered counts the {counted} of "
               f"{len(regrets)} seed(s) where stratified is behind the grid's best (elsewhere there is no gap to "
               "recover and the share is undefined); regret counts every seed.")
    ad = [per_seed[s]["li2025 adaptive"] for s in per_seed]
    out.append("Adaptive stopped: " + "; ".join(f"seed {s}: {a.get('stopped', '?')}" for s, a in zip(per_seed, ad)) + ".")
    return "\n".join(out)


def adaptive_record(out: Path) -> dict:
    import json

    record = json.loads((out / "sweep" / "adaptive.json").read_text())
    last = record["rounds"][-1]
    return {"stopped": last.get("stopped"), "runs_trained": len(record["runs"]),
            "widths": {d: last["p95"][d] - last["p05"][d] for d in last["p95"]}}


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.split("\n")[0], "li2025_grid")
    p.add_argument("--domains", default=None, help="comma-separated bundled domains (default: all three)")
    args = p.parse_args(argv)
    return common.exit_code("adaptive_real.py", lambda: run(args, argv))


def run(args, argv) -> int:
    scale = common.scale_from(args)
    started = time.perf_counter()
    work = Path(args.work)
    domains_arg = args.domains.split(",") if args.domains else None
    data_name = "data" if not domains_arg else "data_" + "+".join(domains_arg)
    data, config = common.setup(work, scale, domains=domains_arg, progress=not args.quiet, data_name=data_name,
                                data_dir=args.data, init=args.init)
    domains = list(data.domains)
    prefix = "" if not domains_arg else "+".join(domains_arg) + "/"
    per_seed = {}
    for seed in scale.seeds:
        by_arm = {}
        seed_dir = work / f"{prefix}seed{seed}"
        for arm, (method, options) in {"grid": ("grid", {}), **ARMS}.items():
            t0 = time.perf_counter()
            cfg = common.dataclasses.replace(config, seed=seed, progress=False)
            out = seed_dir / (CACHE.get(arm, arm))
            r = common.method_result(method, data, scale.budget, cfg, out, options)
            if arm == "li2025 adaptive":
                r = {**r, **adaptive_record(out)}
            by_arm[arm] = r
            common.log(f"seed {seed} {arm:16s} total val loss {sum(r['val_loss'].values()):.4f}  weights "
                       + " ".join(f"{w:.3f}" for w in r["weights"].values())
                       + f"  ({r['runs']} runs, {time.perf_counter() - t0:.0f} s)")
        per_seed[seed] = by_arm
    rows = gap_table(per_seed, domains)
    md = markdown(rows, domains, scale, per_seed)
    minutes = common.method_minutes(r for by_arm in per_seed.values() for r in by_arm.values())
    md += (f"\n\nTraining all of it took {minutes:.0f} min of wall time (cached runs count the time they took "
           "when trained; 2 CPU cores).")
    print(md)
    payload = {"scale": common.dataclasses.asdict(scale), "domains": domains, "rows": rows,
               "per_seed": {str(s): v for s, v in per_seed.items()}}
    return common.publish(args, "adaptive_real", payload, md, {}, started, __file__, argv)


if __name__ == "__main__":
    sys.exit(main())
