"""How far beyond its runs li2025's law holds: the weights it gives at a target T from runs sized
for T, T/4, T/16, ..., against the grid's best mixture trained at T.

mixjax's promise is li2025's: a few cheap runs, then the weights for the budget you will really
train. This experiment measures how cheap the runs can be. At the target T (per seed):
- the truth: every mixture of the 1/8 grid (21 for 3 domains) trained at T, the best total
  validation loss kept;
- the baselines: stratified (uniform) and the data's natural proportions, trained at T;
- li2025 from runs sized for a design budget B = T / d (d = 1 is the paper's design, whose runs
  are T/4.3 to T/2.4 tokens; d = 4, 16, ... while every run keeps `--min-steps` steps): its
  perturbation runs at B, the law fitted to them and optimised at T with each domain capped at its
  training tokens x max_epochs, a final run at T at those weights;
- each variant of the law or the runs the library offers (`variants`): the repetition-aware law
  on the same runs (every divisor), and runs matched to the target's repetition or observed
  along a constant-rate schedule (the cheap divisors only), each with its final run at T.

Per seed, a method's regret is its total validation loss minus the grid's best, and its share of
stratified's gap recovered is 1 - regret / stratified's regret (the grid's best = 1, stratified = 0).
The plot shows that share against the extrapolation ratio, T / the largest perturbation run.
Because the grid's best is picked on each run's noise too, every arm is also scored on a quadratic
fitted to the grid's totals (`grid_surface`): its regret there, and one run's noise about it.

Two bundled settings where the mixture matters: `skewed` (dialogue, code and dataset
descriptions at natural proportions about 0.77 / 0.18 / 0.05), and `repeated` (the same sources
with the descriptions cut to ~13k training tokens, so the grid repeats them up to ~14 times at
the default target). `--data DIR --init PATH --target T` runs it on your own domains and model.

    python experiments/extrapolation.py --setting skewed --seeds 3  # ~65 min on 2 cores (3 x ~20)
    python experiments/extrapolation.py --setting repeated
    python experiments/extrapolation.py --quick                    # a minute: checks the script end to end
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
class Extrapolation:
    """The target, the runs' shape and the design budgets this experiment trains (the base model
    is the common Scale's, pre-trained once)."""

    target: int = 300_000
    batch_size: int = 2                  # small batches (512 tokens), so the cheap runs keep enough steps
    seq_len: int = 256                   # the skewed code domain's prompts need it
    divisors: tuple = (1, 5, 16)         # design budget = target / divisor (ratio ~2.4 x divisor), while runs keep min_steps
    min_steps: int = 20
    max_epochs: float = 16               # the repeated setting's grid repeats its small domain ~14 times
    eval_max_batches: int = 32           # per domain, the same batches every time: 32 x 2 x 256 tokens
    grid_step: float = 0.125             # the truth's grid: 21 mixtures of 3 domains


# The quick scale checks the script end to end: 3 grid mixtures, one design that trains and one too small to.
QUICK = Extrapolation(target=16_384, batch_size=8, seq_len=32, divisors=(4, 16), min_steps=2, eval_max_batches=2,
                      grid_step=0.25)

SETTINGS = ("skewed", "repeated")
# The repeated setting: the skewed setting's sources with the small one cut further.
REPEATED_SHARES = {"dialogue": 0.5, "code": 0.1, "docs": 0.008}


def variants() -> dict:
    """name -> the Li2025 keywords of that variant: li2025 as released, and each variant of the law
    or the runs the library offers (one it lacks is left out, and the results say so). A value of
    None stands for the target."""
    import inspect

    from mixjax.methods.offline import Li2025

    takes = inspect.signature(Li2025.__init__).parameters
    found = {"li2025": {}}
    if "law" in takes:
        found["repeat-law"] = {"law": "li2025-repeat"}  # the same runs, the repetition-aware law
    if "target_budget" in takes:
        found["matched-runs"] = {"target_budget": None}  # each domain repeats in the runs as at T
    if "along_run" in takes:  # constant-rate runs, 4 observations each, with the repetition-aware law
        # (alone they do not help: results/repetition_sim.md); R* fixed at Muennighoff's 15, which
        # runs that do not repeat a domain cannot identify
        found["along-run"] = {"along_run": ALONG_RUN_EVALS, "law": "li2025-repeat", "r_star": 15.0}
    return found


ALONG_RUN_EVALS = 4


RUN_OPTIONS = ("target_budget", "along_run", "scales")  # keywords that change the runs, not only the fit


def design_runs(data, target: int, divisor: int, setup: Extrapolation, options: dict):
    """li2025's proposed runs at design budget target / divisor, or None when a run would have
    fewer than min_steps steps."""
    from mixjax.methods.offline import Li2025

    budget = target // divisor
    runs = Li2025(**options).propose(list(data.domains), budget)
    steps = min(r.budget_tokens for r in runs) // (setup.batch_size * setup.seq_len)
    return (budget, runs) if steps >= setup.min_steps else None


def li2025_arm(data, config, target: int, divisor: int, variant: str, setup: Extrapolation, out: Path) -> dict | None:
    """li2025 (one variant) from runs sized for target / divisor: weights at the target, the final
    run there, and what the runs cost. Cached in OUT/summary.json."""
    from mixjax.io import write_json_atomic
    from mixjax.methods.offline import Li2025
    from mixjax.starter import cached_run

    cached = out / "summary.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    options = {k: (target if v is None else v) for k, v in variants()[variant].items()}
    run_options = {k: v for k, v in options.items() if k in RUN_OPTIONS}
    design = design_runs(data, target, divisor, setup, run_options)
    if design is None:
        return None
    budget, runs = design
    started = time.perf_counter()
    # the runs are shared by the variants that differ only in the law fitted to them
    sweep_dir = out.parent / ("runs-d" + str(divisor) + "".join(f"-{k}" for k in sorted(run_options)))
    method = Li2025(available=data.train_tokens(), max_epochs=setup.max_epochs, **options)
    observations = train_design(method, runs, data, config, sweep_dir)
    weights = method.recommend(observations, list(data.domains), target)
    final = cached_run(config, data, weights, target, out / "final")
    sizes = [int(r.budget_tokens) for r in runs]
    summary = {"variant": variant, "options": options, "law": method.fitted.law.name, "divisor": divisor, "design_budget": budget,
               "run_tokens": [min(sizes), max(sizes)], "ratio": target / max(sizes),
               "runs_cost": sum(sizes) / target, "runs": len(runs) + 1, "weights": weights,
               "val_loss": final["val_loss"], "passes": passes(data, weights, target),
               "seconds": round(time.perf_counter() - started, 1)}
    law_losses = common.law_losses(method.fitted, weights, target)
    summary["predicted_total"] = float(sum(law_losses.values()))
    write_json_atomic(cached, json.loads(json.dumps(summary, default=float)))
    return summary


def passes(data, weights: dict, budget: int) -> dict:
    """How many times each domain's training tokens are seen at `weights` and `budget`."""
    tokens = data.train_tokens()
    return {d: weights[d] * budget / tokens[d] for d in weights}


def repeated_data(work: Path, scale, progress: bool = False):
    """The repeated setting's prepared data in WORK/data_repeated (built once)."""
    from mixjax.data.prepared import PreparedData

    import reweight_collection

    out = Path(work) / "data_repeated"
    if (out / "manifest.json").is_file():
        return PreparedData(out)
    collection = Path(work) / "collection_repeated" / "collection.jsonl"
    reweight_collection.build_bundled_collection(collection, scale.size_mb, shares=REPEATED_SHARES)
    return reweight_collection.prepare_collection(collection, "source", None, None, "byte", out, progress)


def train_design(method, runs, data, config, out: Path):
    """Train `runs` (with the method's run settings) into OUT/runs/<name>, each reused when
    finished at the same budget, weights and seed; their observations."""
    from mixjax.runners.sweep import observations_from_results
    from mixjax.starter import cached_run

    for run in runs:
        run_cfg = method.run_config(config, run)
        cached_run(run_cfg, data, run.weights, int(run.budget_tokens), out / "runs" / run.name)
    return observations_from_results(out, runs, data.domains)


def grid_result(data, config, target: int, out: Path, step: float = 0.125) -> dict:
    """Every mixture of the grid (1/8: 21 for 3 domains) trained at the target: {"weights",
    "val_loss"} of the best total and "grid", every mixture's."""
    from mixjax.methods.static import Grid

    runs = Grid(step).propose(list(data.domains), target)
    obs = train_design(Grid(step), runs, data, config, out)
    best = int(np.argmin(obs.losses.sum(axis=1)))
    grid = [{"weights": r.weights, "val_loss": dict(zip(obs.domains, l.tolist()))} for r, l in zip(runs, obs.losses)]
    return {"weights": grid[best]["weights"], "val_loss": grid[best]["val_loss"], "grid": grid, "runs": len(runs)}


def seed_results(data, config, setup: Extrapolation, seed: int, out: Path, chosen: dict) -> dict:
    """Every arm at one seed: {"grid": {...}, "stratified": {...}, "natural": {...}, "li2025": [...]}."""
    cfg = dataclasses.replace(config, seed=seed, progress=False)
    target = setup.target
    domains = list(data.domains)
    t0 = time.perf_counter()
    row = {"grid": grid_result(data, cfg, target, out / "grid", setup.grid_step)}
    for name, weights in (("stratified", {d: 1 / len(domains) for d in domains}),
                          ("natural", common.natural_weights(data))):
        row[name] = common.fixed_weights_result(data, weights, target, cfg, out / name)
    common.log(f"seed {seed} grid's best {sum(row['grid']['val_loss'].values()):.4f}, stratified "
               f"{sum(row['stratified']['val_loss'].values()):.4f}, natural "
               f"{sum(row['natural']['val_loss'].values()):.4f} ({time.perf_counter() - t0:.0f} s)")
    row["li2025"] = []
    for variant, options in chosen.items():
        for divisor in setup.divisors:
            if divisor == 1 and any(k in RUN_OPTIONS for k in options):
                continue  # variants that change the runs are for cheap runs; the paper's design is li2025's
            t0 = time.perf_counter()
            try:
                r = li2025_arm(data, cfg, target, divisor, variant, setup, out / f"{variant}-d{divisor}")
            except MixjaxError as e:  # e.g. matched runs that ask a cut domain for more passes than allowed
                common.log(f"seed {seed} {variant} T/{divisor}: its runs cannot be trained, skipped: {e}")
                row.setdefault("skipped", []).append({"variant": variant, "divisor": divisor, "reason": str(e)})
                continue
            if r is None:
                common.log(f"seed {seed} {variant} T/{divisor}: runs under {setup.min_steps} steps, skipped")
                continue
            row["li2025"].append(r)
            common.log(f"seed {seed} {variant:12s} T/{divisor:<3d} ratio {r['ratio']:5.1f} total "
                       f"{sum(r['val_loss'].values()):.4f} weights "
                       + " ".join(f"{w:.3f}" for w in r["weights"].values())
                       + f" ({time.perf_counter() - t0:.0f} s)")
    return row


def _quadratic_features(w: np.ndarray) -> np.ndarray:
    """1, w_i and w_i w_j (i <= j) over the first K - 1 weights (the last is 1 minus their sum)."""
    x = np.atleast_2d(w)[:, :-1]
    pairs = [x[:, i] * x[:, j] for i in range(x.shape[1]) for j in range(i, x.shape[1])]
    return np.column_stack([np.ones(len(x)), x, *pairs])


def grid_surface(grid: list[dict], domains: list[str]):
    """A quadratic fitted by least squares to the grid's total losses over the simplex: the truth with
    each run's noise averaged out. (regret(weights) on the surface against its minimum, the residual
    standard deviation of one run), or None when the grid has too few mixtures for the fit."""
    from mixjax.methods.static import simplex_grid

    w = np.array([[g["weights"][d] for d in domains] for g in grid])
    y = np.array([sum(g["val_loss"][d] for d in domains) for g in grid])
    x = _quadratic_features(w)
    if len(y) <= x.shape[1]:
        return None
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    sigma = float(np.sqrt(np.sum((y - x @ coef) ** 2) / (len(y) - x.shape[1])))
    fine = simplex_grid(len(domains), 1 / max(8, 360 // len(domains) ** 2), include_zero=True)  # 1/40 for 3
    low = float((_quadratic_features(fine) @ coef).min())
    return (lambda weights: float((_quadratic_features(np.array([weights[d] for d in domains])) @ coef)[0]) - low,
            sigma)


def summarise(per_seed: dict, domains: list[str]) -> dict:
    """Rows (variant, divisor) and the baselines: regret and gap recovered, paired by seed; each
    arm's regret on the seed's smoothed grid surface where the grid is large enough to fit one."""
    seeds = list(per_seed)
    surfaces = {s: grid_surface(per_seed[s]["grid"]["grid"], domains) for s in seeds}

    def smoothed(arms):
        if any(surfaces[s] is None for s in seeds):
            return None
        return [surfaces[s][0](a["weights"]) for a, s in zip(arms, seeds)]

    def total(r):
        return sum(r["val_loss"][d] for d in domains)

    best = {s: total(per_seed[s]["grid"]) for s in seeds}
    strat_regret = [total(per_seed[s]["stratified"]) - best[s] for s in seeds]
    rows = {}
    for name in ("stratified", "natural", "grid"):
        regret = [total(per_seed[s][name]) - best[s] for s in seeds]
        rows[name] = {"regret_per_seed": regret, "regret": common.mean_std(regret),
                      "gap_recovered": common.gap_recovered(regret, strat_regret),
                      "smoothed_regret_per_seed": smoothed([per_seed[s][name] for s in seeds]),
                      "weights_per_seed": [[per_seed[s][name]["weights"][d] for d in domains] for s in seeds]}
    keys = sorted({(r["variant"], r["divisor"]) for s in seeds for r in per_seed[s]["li2025"]},
                  key=lambda k: (list(variants()).index(k[0]) if k[0] in variants() else 99, k[1]))
    for variant, divisor in keys:
        arms = [next((r for r in per_seed[s]["li2025"] if (r["variant"], r["divisor"]) == (variant, divisor)), None)
                for s in seeds]
        if any(a is None for a in arms):
            continue
        regret = [total(a) - best[s] for a, s in zip(arms, seeds)]
        rows[f"{variant} T/{divisor}"] = {
            "variant": variant, "divisor": divisor, "ratio": arms[0]["ratio"], "runs_cost": arms[0]["runs_cost"],
            "runs": arms[0]["runs"], "regret_per_seed": regret, "regret": common.mean_std(regret),
            "gap_recovered": common.gap_recovered(regret, strat_regret), "smoothed_regret_per_seed": smoothed(arms),
            "weights_per_seed": [[a["weights"][d] for d in domains] for a in arms],
            "max_passes": float(np.mean([max(a["passes"].values()) for a in arms])),
            "law_error": float(np.mean([a["predicted_total"] - total(a) for a in arms]))}
    if all(surfaces.values()):
        rows["grid"]["surface_sigma_per_seed"] = [surfaces[s][1] for s in seeds]
    return rows


def markdown(rows: dict, domains: list[str], setup: Extrapolation, setting: str, natural: dict, seeds) -> str:
    lines = [f"Setting `{setting}`: {len(domains)} domains, natural proportions "
             + ", ".join(f"{d} {w:.3f}" for d, w in natural.items())
             + f"; target {setup.target:,} tokens, batch {setup.batch_size} x {setup.seq_len}, "
             f"max {setup.max_epochs:g} passes per domain, tiny preset fine-tuned from the cached base, "
             f"{len(seeds)} seed(s).", "",
             "| method | extrapolation ratio (T / largest run) | runs' tokens / T | mean weights ("
             + " / ".join(domains) + ") | regret vs grid's best (nats) | gap recovered | per seed "
             "| regret on the grid's smoothed surface (nats) | law's predicted minus measured total |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        g = r["gap_recovered"]
        se = f" ± {g['se']:.2f}" if g["se"] is not None else ""
        gap = "1 (the truth)" if name == "grid" else ("0" if name == "stratified" else f"{g['mean']:.2f}{se}")
        per_seed = ", ".join("-" if not np.isfinite(v) else f"{v:.2f}" for v in g["per_seed"])
        weights = " / ".join(f"{w:.3f}" for w in np.mean(r["weights_per_seed"], 0))
        ratio = f"{r['ratio']:.1f}" if "ratio" in r else "-"
        cost = f"{r['runs_cost']:.2f}" if "runs_cost" in r else "-"
        law = f"{r['law_error']:+.3f}" if "law_error" in r else "-"
        smooth = r.get("smoothed_regret_per_seed")
        smooth = "-" if smooth is None else "{:+.4f} ± {:.4f}".format(*common.mean_std(smooth))
        lines.append(f"| {name} | {ratio} | {cost} | {weights} | {r['regret'][0]:+.4f} ± {r['regret'][1]:.4f} "
                     f"| {gap} | {per_seed} | {smooth} | {law} |")
    strat = rows["stratified"]["regret_per_seed"]
    lines += ["", "Regret: total validation loss minus the grid's best of the same seed (mean ± std). Gap "
              "recovered: 1 - regret / stratified's regret per seed, mean ± standard error over the seeds "
              "where stratified is behind the grid's best (stratified's regret per seed: "
              + ", ".join(f"{v:+.4f}" for v in strat) + " nats). Runs' tokens / T: every perturbation run "
              "together, in runs at the target (the target's final run not counted)."]
    sigma = rows["grid"].get("surface_sigma_per_seed")
    if sigma:
        lines += ["", "Smoothed surface: per seed, a quadratic in the weights fitted by least squares to the grid's "
                  "total losses, so one run's noise is averaged over the grid; regret there is the arm's value on "
                  "it minus the surface's minimum (mean ± std over seeds). One run's total scatters about the "
                  "surface by " + ", ".join(f"{v:.4f}" for v in sigma) + " nats (residual std per seed): the "
                  "grid's best of its mixtures is picked partly on that noise, which the grid row's own smoothed "
                  "regret shows."]
    return "\n".join(lines)


def figure(rows: dict, setting: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    by_variant = {}
    for r in rows.values():
        if "variant" in r:
            by_variant.setdefault(r["variant"], []).append(r)
    ratios = [r["ratio"] for rs in by_variant.values() for r in rs] or [1.0]
    for variant, rs in by_variant.items():
        rs = sorted((r for r in rs if np.isfinite(r["gap_recovered"]["mean"])), key=lambda r: r["ratio"])
        if not rs:  # no seed with a gap to recover
            continue
        x = [r["ratio"] for r in rs]
        y = [r["gap_recovered"]["mean"] for r in rs]
        e = [r["gap_recovered"]["se"] or 0.0 for r in rs]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=4, label=variant)
    ax.axhline(1, color="k", lw=0.8, ls="--", label="grid's best at T")
    ax.axhline(0, color="grey", lw=0.8, label="stratified")
    nat = rows["natural"]["gap_recovered"]["mean"]
    if np.isfinite(nat) and nat > -3:
        ax.axhline(nat, color="tab:red", lw=0.8, ls=":", label="natural proportions")
    ax.axhline(0.9, color="tab:green", lw=0.6, ls=":", label="target 0.9")
    ax.set_xscale("log")
    ax.set_xlim(min(ratios) / 1.5, max(ratios) * 1.5)
    ax.set_xlabel("extrapolation ratio: target / largest perturbation run")
    ax.set_ylabel("share of stratified's gap recovered")
    ax.set_title(f"li2025 beyond its runs ({setting}; mean ± s.e. over seeds)")
    ax.legend(fontsize=8, frameon=False)
    return fig


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.splitlines()[0], "extrapolation")
    p.add_argument("--setting", choices=SETTINGS, default="skewed", help="the bundled domains (not with --data)")
    p.add_argument("--target", type=int, default=None, help="the target budget T in tokens (default 300,000)")
    p.add_argument("--divisors", default=None, help="design budgets as divisors of T (default 1,5,16)")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants to train (default: every one the library offers: "
                        "li2025, repeat-law, matched-runs, along-run)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    return common.exit_code("extrapolation.py", lambda: run(args, argv))


def experiment_setup(args) -> Extrapolation:
    setup = QUICK if args.quick else Extrapolation()
    if args.target:
        setup = dataclasses.replace(setup, target=args.target)
    if args.divisors:
        try:
            divisors = tuple(int(x) for x in args.divisors.split(","))
            assert divisors and all(d >= 1 for d in divisors)
        except (ValueError, AssertionError):
            raise MixjaxError(f"--divisors: whole numbers >= 1 separated by commas, got {args.divisors!r}") from None
        setup = dataclasses.replace(setup, divisors=divisors)
    return setup


def chosen_variants(text: str | None) -> dict:
    """--variants as {name: keywords}; an unknown or unavailable one stops before anything trains."""
    offered = variants()
    if not text:
        return offered
    names = [v for v in text.split(",") if v]
    unknown = [v for v in names if v not in offered]
    if unknown or not names:
        raise MixjaxError(f"--variants: unknown {', '.join(unknown) or '(none given)'}; this library offers "
                          f"{', '.join(offered)}")
    return {v: offered[v] for v in names}


def run(args, argv) -> int:
    if args.budget:
        raise MixjaxError("--budget: this experiment's budget is --target")
    scale = common.scale_from(args)
    setup = experiment_setup(args)
    chosen = chosen_variants(args.variants)
    started = time.perf_counter()
    work = Path(args.work)
    if args.data:
        data_dir, setting = args.data, Path(args.data).name
    else:
        build = common.skewed_data if args.setting == "skewed" else repeated_data
        data_dir, setting = build(work, scale, progress=not args.quiet).directory, args.setting
    data, config = common.setup(work, dataclasses.replace(scale, budget=setup.target), progress=not args.quiet,
                                data_dir=data_dir, init=args.init, max_epochs=setup.max_epochs)
    config = dataclasses.replace(config, batch_size=setup.batch_size, seq_len=setup.seq_len,
                                 eval_max_batches=setup.eval_max_batches, max_epochs=setup.max_epochs)
    domains = list(data.domains)
    per_seed = {}
    for seed in scale.seeds:
        per_seed[seed] = seed_results(data, config, setup, seed, work / setting / f"seed{seed}", chosen)
    rows = summarise(per_seed, domains)
    natural = common.natural_weights(data)
    md = markdown(rows, domains, setup, setting, natural, scale.seeds)
    skipped = [f"- seed {seed}, {k['variant']} T/{k['divisor']}: {k['reason']}"
               for seed, row in per_seed.items() for k in row.get("skipped", [])]
    if skipped:
        md += ("\n\nArms whose runs could not be trained (left out of the table for every seed):\n"
               + "\n".join(skipped))
    missing = [v for v in ("repeat-law", "matched-runs", "along-run") if v not in variants()]
    if missing:
        md += f"\n\nVariants not in this library version: {', '.join(missing)}."
    print(md)
    payload = {"setup": dataclasses.asdict(setup), "setting": setting, "domains": domains,
               "natural_weights": natural, "train_tokens": data.train_tokens(), "rows": rows,
               "per_seed": {str(s): v for s, v in per_seed.items()}}
    return common.publish(args, f"extrapolation-{setting}", payload, md, {"gap_vs_ratio": figure(rows, setting)},
                          started, __file__, argv)


if __name__ == "__main__":
    sys.exit(main())
