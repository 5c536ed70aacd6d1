"""Aioli where it can act: runs of 1,600 steps with 8 rounds (the released shape, an update every
250 of 5,000 steps, scaled), against stratified sampling at the same seeds, on two and three of
the bundled domains; and the paper's restricted setting, where Aioli adjusts weights another
method learned on shorter runs.

The comparison runs (`aioli_compare.py`) give Aioli 4 rounds of 15-60 steps, where its weights
barely move. Here every run is 1,600 steps of 8 x 128 tokens (1.6M tokens) with an update every
200 steps; LearnParams keeps the released settings for K domains (4 sweeps of K intervals of 4
steps for 2 domains, 6 for 3, so 13-36% of each round), and each evaluation reads 2 held-out
batches per domain (`experiments/aioli_eval_size.py`). The restricted setting (three domains):
li2025's law, fitted on its 13 perturbation runs of `li2025_grid.py` (250k-token scale, ~15% of
this budget), optimised at this budget, trained as is (`li2025`) and as Aioli's starting weights
(`aioli from li2025`: EG steps from the prior, the same 8 rounds).

Metric: average validation perplexity over the setting's domains (the Aioli paper's), on 32
held-out batches per domain, and the total validation loss; every arm minus stratified, paired by
seed, mean ± standard error.

    python experiments/aioli_long.py            # ~25 min on 2 CPU cores (base model and li2025 runs cached)
    python experiments/aioli_long.py --quick    # a minute: checks the script end to end
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

STEPS, ROUNDS = 1600, 8
LONG = common.Scale(budget=STEPS * 8 * 128, batch_size=8, seq_len=128, eval_max_batches=32, online_eval_batches=2)
QUICK_STEPS = 48
QUICK = dataclasses.replace(common.QUICK, budget=QUICK_STEPS * 8 * 64)
SETTINGS = {"dialogue+math": ("dialogue", "math"), "dialogue+math+code": ("dialogue", "math", "code")}
ARMS = ("stratified", "aioli", "li2025", "aioli from li2025")
RESTRICTED = ("li2025", "aioli from li2025")


def perplexity(val_loss: dict) -> float:
    return float(np.mean([np.exp(v) for v in val_loss.values()]))


def aioli_options(steps: int, quick: bool) -> dict:
    """ROUNDS updates over the run; the released LearnParams settings for K (a one-step sweep at --quick)."""
    update = steps // ROUNDS
    return {"lp_rounds": 1, "lp_steps": 1, "update_steps": update} if quick else {"update_steps": update}


def li2025_prior(data, short_config, short_scale: common.Scale, seed: int, work: Path, budget: int) -> dict:
    """li2025's weights at `budget`: its law fitted on its perturbation runs at the short scale of
    li2025_grid.py (the same cached runs, final losses), optimised at this run's budget."""
    from mixjax.laws import load_law_file
    from mixjax.optimize import optimize

    out = work / f"seed{seed}" / "li2025-final-loss"
    common.method_result("li2025", data, short_scale.budget, dataclasses.replace(short_config, seed=seed,
                         progress=False), out, {"perturbation_evals": 0})
    fitted = load_law_file(out / "law.json")
    result = optimize(fitted, [budget], available=data.train_tokens(), max_epochs=short_config.max_epochs)
    return dict(zip(fitted.domains, result.weights[0].tolist()))


def run_arm(arm: str, data, config, scale, seed: int, out: Path, prior: dict | None, quick: bool) -> dict:
    steps = scale.budget // (scale.batch_size * scale.seq_len)
    cfg = dataclasses.replace(config, seed=seed, progress=False)
    if arm == "stratified":
        return common.method_result("stratified", data, scale.budget, cfg, out)
    if arm == "li2025":
        return common.fixed_weights_result(data, prior, scale.budget, cfg, out)
    options = aioli_options(steps, quick)
    if arm == "aioli from li2025":
        options.update(prior_weights=[prior[d] for d in data.domains], dynamic_start="prior")
    return common.method_result("aioli", data, scale.budget, cfg, out, options, eval_batches=scale.online_eval_batches)


def round_weights(out: Path, update_steps: int, steps: int) -> list[list[float]]:
    """The weights Aioli trained on at the end of each round (after its LearnParams intervals),
    from MIX_DIR/trajectory.json (every change of the weights, by step)."""
    import json

    record = json.loads((out / "trajectory.json").read_text())
    points = [(p["step"], [p["weights"][d] for d in record["domains"]]) for p in record["trajectory"]]
    ends = range(update_steps - 1, steps, update_steps)
    return [[float(x) for x in [w for s, w in points if s <= end][-1]] for end in ends]


def moved(rounds: list[list[float]], start: list[float]) -> float:
    """Largest distance (over rounds and domains) from the weights Aioli started from."""
    return float(np.abs(np.asarray(rounds) - np.asarray(start)).max()) if rounds else float("nan")


def summarise(results: dict) -> dict:
    """results[setting][seed][arm] -> per setting and arm: perplexity and total loss (mean, std),
    the paired difference to stratified in both, the mean weights and how far Aioli moved them."""
    table = {}
    for setting, per_seed in results.items():
        arms = [a for a in ARMS if all(a in by_arm for by_arm in per_seed.values())]
        rows = {}
        for a in arms:
            ppl = [perplexity(by[a]["val_loss"]) for by in per_seed.values()]
            total = [sum(by[a]["val_loss"].values()) for by in per_seed.values()]
            strat_ppl = [perplexity(by["stratified"]["val_loss"]) for by in per_seed.values()]
            strat_total = [sum(by["stratified"]["val_loss"].values()) for by in per_seed.values()]
            rows[a] = {"perplexity": common.mean_std(ppl), "total": common.mean_std(total),
                       "ppl_minus_stratified": common.paired_difference(ppl, strat_ppl),
                       "total_minus_stratified": common.paired_difference(total, strat_total),
                       "weights": {d: float(np.mean([by[a]["weights"][d] for by in per_seed.values()]))
                                   for d in next(iter(per_seed.values()))[a]["weights"]},
                       "moved": float(np.nanmean([by[a].get("moved", np.nan) for by in per_seed.values()]))
                       if a.startswith("aioli") else None}
        table[setting] = rows
    return table


def markdown(table: dict, scale, n_seeds: int, steps: int) -> str:
    lines = [f"{steps:,} steps of {scale.batch_size} x {scale.seq_len} tokens ({scale.budget:,} tokens) per run, "
             f"Aioli updating every {steps // ROUNDS} steps ({ROUNDS} rounds); tiny preset fine-tuned from the cached "
             f"base model; {n_seeds} seed(s); validation on {scale.eval_max_batches} held-out batches per domain.", ""]
    for setting, rows in table.items():
        lines += [f"### {setting}", "",
                  "| arm | weights (mean over seeds) | Aioli's largest move from its start | perplexity | minus stratified "
                  "(perplexity, mean ± s.e.) | total loss | minus stratified (nats, mean ± s.e.) |",
                  "|---|---|---|---|---|---|---|"]
        for a, r in rows.items():
            d_ppl, d_tot = r["ppl_minus_stratified"], r["total_minus_stratified"]
            se = lambda d: f" ± {d['se']:.4f}" if d["se"] is not None else ""  # noqa: E731
            moved = f"{r['moved']:.3f}" if r["moved"] is not None else "-"
            lines.append(f"| {a} | " + " / ".join(f"{w:.3f}" for w in r["weights"].values())
                         + f" | {moved} | {r['perplexity'][0]:.4f} ± {r['perplexity'][1]:.4f}"
                         + (f" | {d_ppl['mean']:+.4f}{se(d_ppl)}" if a != "stratified" else " | -")
                         + f" | {r['total'][0]:.4f}"
                         + (f" | {d_tot['mean']:+.4f}{se(d_tot)} |" if a != "stratified" else " | - |"))
        lines.append("")
        for a, r in rows.items():
            if a != "stratified":
                lines.append("- " + common.verdict(r["total_minus_stratified"], f"{a} minus stratified (total loss)"))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.splitlines()[0], "li2025_grid", data_flags=False)
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: " + ", ".join(SETTINGS))
    p.add_argument("--arms", default=",".join(ARMS),
                   help="comma-separated: " + ", ".join(ARMS) + " (stratified is always run; the li2025 arms "
                        "on the three-domain setting only)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    return common.exit_code("aioli_long.py", lambda: run(args, argv))


def run(args, argv) -> int:
    from mixjax.errors import MixjaxError

    short = common.scale_from(args)  # li2025_grid.py's scale: the restricted setting's prior runs
    scale = dataclasses.replace(QUICK if args.quick else LONG, seeds=short.seeds)
    steps = scale.budget // (scale.batch_size * scale.seq_len)
    settings = [s for s in args.settings.split(",") if s]
    arms = ["stratified"] + [a for a in args.arms.split(",") if a and a != "stratified"]
    for flag, given, known in (("--settings", settings, SETTINGS), ("--arms", arms, ARMS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise MixjaxError(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    started = time.perf_counter()
    work = Path(args.work)
    results = {}
    for name in settings:
        domains = SETTINGS[name]
        three = len(domains) == 3
        data, short_config = common.setup(work, short, domains=domains, progress=not args.quiet,
                                          data_name="data" if three else f"data_{name}")
        config = dataclasses.replace(short_config, batch_size=scale.batch_size, seq_len=scale.seq_len,
                                     eval_max_batches=scale.eval_max_batches)
        results[name] = {}
        for seed in scale.seeds:
            prior = li2025_prior(data, short_config, short, seed, work, scale.budget) if three else None
            results[name][seed] = {}
            for arm in arms:
                if arm in RESTRICTED and not three:
                    continue
                t0 = time.perf_counter()
                out = work / "aioli_long" / name / f"seed{seed}" / arm.replace(" ", "_")
                r = run_arm(arm, data, config, scale, seed, out, prior, args.quick)
                if arm.startswith("aioli"):
                    start = [prior[d] for d in data.domains] if arm in RESTRICTED else [1 / len(domains)] * len(domains)
                    rounds = round_weights(out, steps // ROUNDS, steps)
                    r = {**r, "round_weights": rounds, "moved": moved(rounds, start)}
                results[name][seed][arm] = r
                common.log(f"{name} seed {seed} {arm:18s} perplexity {perplexity(r['val_loss']):.4f}  weights "
                           + " ".join(f"{w:.3f}" for w in r["weights"].values())
                           + f"  ({time.perf_counter() - t0:.0f} s)")
    table = summarise(results)
    md = markdown(table, scale, len(scale.seeds), steps)
    minutes = common.method_minutes(r for per_seed in results.values() for by in per_seed.values()
                                    for r in by.values())
    md += (f"\nTraining all of it took {minutes:.0f} min of wall time (the runs' own timings; the li2025 prior runs "
           "are li2025_grid.py's and not counted).")
    print(md)
    payload = {"scale": dataclasses.asdict(scale), "steps": steps, "rounds": ROUNDS, "table": table,
               "results": {s: {str(k): v for k, v in r.items()} for s, r in results.items()}}
    return common.publish(args, "aioli_long", payload, md, {}, started, __file__, argv)


if __name__ == "__main__":
    sys.exit(main())
