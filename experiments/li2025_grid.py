"""li2025's controlled experiment at laptop scale: 3 bundled domains (dialogue, math, code), the
1/8 grid (21 mixtures) at one budget, li2025's weights from its perturbation runs, and every
baseline, over several seeds.

For every method: per-domain validation loss; the paper's metric, the mean over domains of
(loss - best grid loss of that domain) / best grid loss (the paper reports 0.66%); and its regret
on the objective it optimises, total validation loss against the best grid mixture's, with the
spread over seeds; and the runs and tokens it spent. The grid row is the best grid mixture itself,
so its metric shows what the metric means when each domain's best sits at another corner.

Two bundled settings: `balanced` (the bundled domains, about 2 MB each, whose optimum sits near
uniform) and `skewed` (dialogue, code and dataset descriptions in the bundled collection's unequal
sizes, natural proportions about 0.78 / 0.17 / 0.05, as in real collections). Besides the methods,
`natural` trains at the data's natural proportions (what concatenating the files gives). Each
method's share of the stratified-to-grid-best gap it recovers is 1 - regret / stratified's regret,
per seed (paired), then mean ± standard error.

    python experiments/li2025_grid.py            # ~1 h on 2 CPU cores; reruns resume from --work
    python experiments/li2025_grid.py --setting skewed --methods stratified,natural,li2025,dml,regmix  # ~55 min
    python experiments/li2025_grid.py --quick    # a minute: checks the script end to end
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = ("stratified", "natural", "grid", "li2025", "dml", "regmix", "aioli", "doremi", "doge", "skillit")
SETTINGS = ("balanced", "skewed")


def paper_metric(val_loss: dict, best: dict) -> float:
    """Mean over domains of the relative excess over that domain's best grid loss, in percent."""
    return 100 * float(np.mean([(val_loss[d] - best[d]) / best[d] for d in best]))


def summarise(per_seed: dict, domains: list[str], budget: int) -> dict:
    """per_seed[seed][method] = method_result(...) -> rows of means and spreads over seeds."""
    rows = {}
    methods = [m for m in METHODS if all(m in by_method for by_method in per_seed.values())]
    for m in methods:
        metric, regret, losses, weights = [], [], [], []
        for seed, by_method in per_seed.items():
            grid = by_method["grid"]["grid"]
            best = {d: min(g["val_loss"][d] for g in grid) for d in domains}
            best_total = min(sum(g["val_loss"].values()) for g in grid)
            r = by_method[m]
            metric.append(paper_metric(r["val_loss"], best))
            regret.append(sum(r["val_loss"][d] for d in domains) - best_total)
            losses.append([r["val_loss"][d] for d in domains])
            weights.append([r["weights"][d] for d in domains])
        first = next(iter(per_seed.values()))[m]
        rows[m] = {"metric_pct": common.mean_std(metric), "regret": common.mean_std(regret),
                   "val_loss": dict(zip(domains, np.mean(losses, 0).tolist())),
                   "weights": dict(zip(domains, np.mean(weights, 0).tolist())),
                   "weights_per_seed": weights, "metric_per_seed": metric, "regret_per_seed": regret,
                   "runs": first["runs"], "tokens_x_budget": first["tokens"] / budget}
    for baseline, key in (("stratified", "gap_recovered"), ("natural", "natural_gap_recovered")):
        if baseline in rows:  # the share of the baseline-to-grid-best gap each method recovers
            for r in rows.values():
                r[key] = common.gap_recovered(r["regret_per_seed"], rows[baseline]["regret_per_seed"])
    return rows


def gap_cell(r: dict, key: str = "gap_recovered") -> str:
    g = r.get(key)
    if g is None:
        return "-"
    se = f" ± {g['se']:.2f}" if g["se"] is not None else ""
    seeds = f", {g['n']} of {len(g['per_seed'])} seeds" if g["n"] < len(g["per_seed"]) else ""
    return f"{g['mean']:.2f}{se} ({g['of_mean_gap']:.2f}{seeds})"


def markdown(rows: dict, domains: list[str], scale, n_seeds: int, setting: str = "balanced",
             natural: dict | None = None) -> str:
    head = ("| method | " + " | ".join(f"w {d}" for d in domains) + " | "
            + " | ".join(f"{d} loss" for d in domains)
            + " | paper metric (%) | regret vs best grid mixture (nats) | gap recovered | natural's gap recovered "
            "| runs | tokens / budget |")
    about = f"setting `{setting}`, " if setting else ""
    lines = [f"{about}{len(domains)} domains, {scale.budget:,} tokens per run, tiny preset fine-tuned from the "
             f"cached base model, {n_seeds} seed(s); mean (± std over seeds)."]
    if natural:
        lines[0] += (" Natural proportions (train tokens): "
                     + ", ".join(f"{d} {w:.3f}" for d, w in natural.items()) + ".")
    lines += ["", head, "|---" * (2 * len(domains) + 7) + "|"]
    for m, r in rows.items():
        lines.append(f"| {m} | " + " | ".join(f"{r['weights'][d]:.3f}" for d in domains) + " | "
                     + " | ".join(f"{r['val_loss'][d]:.4f}" for d in domains)
                     + f" | {r['metric_pct'][0]:.2f} ± {r['metric_pct'][1]:.2f}"
                     + f" | {r['regret'][0]:+.4f} ± {r['regret'][1]:.4f} | {gap_cell(r)}"
                     + f" | {gap_cell(r, 'natural_gap_recovered')}"
                     + f" | {r['runs']} | {r['tokens_x_budget']:.1f} |")
    if "stratified" in rows:
        lines += ["", "Gap recovered: 1 - regret / stratified's regret, per seed (paired), mean ± standard error "
                  "over the seeds where stratified is behind the grid's best (elsewhere there is no gap); in "
                  "brackets 1 - mean regret / stratified's mean regret. 1 is the grid's best, "
                  "0 stratified, below 0 worse than stratified. Stratified's regret per seed: "
                  + ", ".join(f"{v:+.4f}" for v in rows["stratified"]["regret_per_seed"]) + " nats."
                  + (" Natural's gap recovered: the same against natural proportions (regret per seed "
                     + ", ".join(f"{v:+.4f}" for v in rows["natural"]["regret_per_seed"]) + " nats)."
                     if "natural" in rows else "")]
    lines += ["", "The grid row is the best grid mixture of each seed: its regret is 0 by definition, and "
              "optimistic, since the best of 21 runs is picked on the same seed's validation loss. Its paper "
              "metric is what the metric reads when each domain's best loss sits at a different corner of "
              "the grid. Regret is on the objective every method optimises, total validation loss; "
              "tokens / budget counts every run a method trained, its final run included."]
    return "\n".join(lines)


def figures(per_seed: dict, rows: dict, domains: list[str]) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid_weights = np.array([[g["weights"][d] for d in domains] for g in next(iter(per_seed.values()))["grid"]["grid"]])
    grid_totals = np.mean([[sum(g["val_loss"].values()) for g in by_m["grid"]["grid"]]
                           for by_m in per_seed.values()], axis=0)

    fig2, ax2 = plt.subplots(figsize=(7, 3.8))
    names = list(rows)
    means = [rows[m]["regret"][0] for m in names]
    stds = [rows[m]["regret"][1] for m in names]
    ax2.bar(names, means, yerr=stds, capsize=4, color="tab:blue")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_ylabel("total val loss - best grid mixture's (nats)")
    ax2.set_title("Regret on the optimised objective (mean ± std over seeds)")
    ax2.tick_params(axis="x", rotation=30)
    if len(domains) != 3:  # the simplex picture is for three domains
        return {"regret": fig2}

    def xy(w):
        w = np.atleast_2d(w)
        return w[:, 1] + w[:, 2] / 2, w[:, 2] * np.sqrt(3) / 2

    fig1, ax = plt.subplots(figsize=(6.5, 5.5))
    x, y = xy(grid_weights)
    sc = ax.scatter(x, y, c=grid_totals, cmap="viridis", s=160, marker="h")
    fig1.colorbar(sc, ax=ax, label="total validation loss (grid, mean over seeds)")
    markers = "osD^v<>Pp*X"
    for i, (m, r) in enumerate(rows.items()):
        if m == "grid":
            continue
        ws = np.array(r["weights_per_seed"])
        mx, my = xy(ws)
        ax.scatter(mx, my, marker=markers[i % len(markers)], s=45, edgecolor="k", label=m, zorder=3)
    corners = np.eye(3)
    cx, cy = xy(corners)
    ax.plot(np.r_[cx, cx[0]], np.r_[cy, cy[0]], "k-", lw=0.8)
    for d, a, b in zip(domains, cx, cy):
        ax.annotate(d, (a, b), textcoords="offset points", xytext=(0, -14 if b == 0 else 6), ha="center")
    ax.set_axis_off()
    ax.set_title("Grid mixtures and each method's weights (one marker per seed)")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return {"simplex": fig1, "regret": fig2}


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.splitlines()[0], "li2025_grid")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (grid is always run)")
    p.add_argument("--setting", choices=SETTINGS, default="balanced",
                   help="the bundled domains to run on: balanced (default) or skewed (see above); not with --data")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    return common.exit_code("li2025_grid.py", lambda: run(args, argv))


def run(args, argv) -> int:
    scale = common.scale_from(args)
    methods = common.parse_methods(args.methods, "grid")
    started = time.perf_counter()
    work = Path(args.work)
    skewed = args.setting == "skewed"
    if skewed and args.data:
        from mixjax.errors import MixjaxError
        raise MixjaxError("--setting skewed picks bundled domains; with --data the setting is your data")
    data_dir = common.skewed_data(work, scale, progress=not args.quiet).directory if skewed else args.data
    data, config = common.setup(work, scale, progress=not args.quiet, data_dir=data_dir, init=args.init)
    domains = list(data.domains)
    runs = work / "skewed" if skewed else work  # the base model is shared; the runs are not
    per_seed = {}
    for seed in scale.seeds:
        per_seed[seed] = {}
        for m in methods:
            t0 = time.perf_counter()
            r = common.run_method(m, data, scale.budget, config, seed, runs / f"seed{seed}" / m, scale)
            per_seed[seed][m] = r
            total = sum(r["val_loss"].values())
            common.log(f"seed {seed} {m:10s} total val loss {total:.4f}  weights "
                       + " ".join(f"{w:.3f}" for w in r["weights"].values())
                       + f"  ({r['runs']} runs, {time.perf_counter() - t0:.0f} s)")
    rows = summarise(per_seed, domains, scale.budget)
    natural = common.natural_weights(data)
    md = markdown(rows, domains, scale, len(scale.seeds), args.setting if not args.data else "", natural)
    minutes = common.method_minutes(r for by_m in per_seed.values() for r in by_m.values())
    md += (f"\n\nTraining all of it took {minutes:.0f} min of wall time (every method and seed, "
           "on 2 CPU cores shared with other jobs).")
    print(md)
    seconds = time.perf_counter() - started
    payload = {"scale": common.dataclasses.asdict(scale), "setting": args.setting if not args.data else None,
               "domains": domains, "natural_weights": natural, "rows": rows,
               "per_seed": {str(s): v for s, v in per_seed.items()}}
    name = "li2025_grid" + ("-skewed" if skewed else "") + ("_quick" if args.quick else "")
    common.write_results(Path(args.results), name, payload, md, figures(per_seed, rows, domains), seconds,
                         command=common.command_line(__file__, argv))
    common.log(f"results in {args.results}/{name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
