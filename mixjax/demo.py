"""`mixjax demo`: the li2025 pipeline where the mixture matters, on a laptop CPU.

1. the skewed bundled collection (mixjax.data.bundled.skewed_data): dialogue, code and dataset
   descriptions in very different sizes (natural proportions about 0.77 / 0.18 / 0.05), the small
   domain unlike the base model's text. On balanced domains every mixture sits in seed noise at
   this scale; here natural proportions are about 0.2 nats behind stratified weights;
2. a base model: the tiny preset pre-trained on generic text (the Python documentation shipped with
   the standard library), cached, since SFT starts from a pretrained model;
3. li2025's perturbation runs (1 + 4K), fine-tuned from the base model, each recording its final
   loss (the authors' best of several evaluations, `mixjax mix`'s default of 3, would cost more
   than their training at these lengths);
4. the law fitted to every run's loss on every domain, and its optimal weights at a few budgets;
5. verification runs at the optimised weights, at stratified weights and at the data's natural
   proportions (what concatenating the files gives), at the same budget and over two seeds, and
   what the optimised weights save against each baseline with its seed noise.
Every step is cached in the working directory, so a rerun (or an interrupted run) resumes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from mixjax.io import write_json_atomic, write_text_atomic


@dataclasses.dataclass(frozen=True)
class DemoProfile:
    size_mb: float = 2.0                # the skewed collection's size, before its shares
    base_tokens: int = 600_000          # pre-training of the base model
    perturb_tokens_per_domain: int = 20_833  # li2025's base run: a quarter of the target budget
    target_tokens: int = 250_000        # the budget weights are verified at
    budgets: tuple = (250_000, 2_500_000, 25_000_000)
    seeds: tuple = (0, 1)               # of the verification runs: the noise of each difference
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    sft_lr: float = 1e-3
    eval_max_batches: int | None = 8    # validation batches per domain: the same 8 x 16 x 256 tokens each time


QUICK = DemoProfile(size_mb=0.1, base_tokens=16_384, perturb_tokens_per_domain=2048, target_tokens=8192,
                    budgets=(8192, 81_920), batch_size=8, seq_len=64)
ARMS = ("optimised", "stratified", "natural")


def _log(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


def run_demo(out: str | Path, profile: DemoProfile = DemoProfile(), progress: bool = True) -> dict:
    from mixjax import laws
    from mixjax.data.bundled import skewed_data
    from mixjax.fit import FitOptions, fit
    from mixjax.methods.offline import Li2025
    from mixjax.runners.sweep import run_sweep
    from mixjax.optimize import optimize
    from mixjax.report import plot, table
    from mixjax.starter import pretrained_base
    from mixjax.train import TrainConfig

    started = time.perf_counter()
    out = Path(out)
    _log("1/6", "the skewed bundled collection: dialogue, code and dataset descriptions (docs) in unequal sizes")
    data = skewed_data(out, profile.size_mb, progress=progress)
    domains = data.domains
    available = data.train_tokens()
    natural = {d: available[d] / sum(available.values()) for d in domains}  # what concatenating the files gives
    _log("1/6", "train tokens: " + ", ".join(f"{d} {available[d]:,} ({natural[d]:.2f})" for d in domains))
    base = pretrained_base(out, profile.base_tokens, profile.batch_size, profile.seq_len, profile.lr,
                           text_mb=profile.size_mb, progress=progress, log=lambda s: _log("2/6", s))

    config = TrainConfig(init=str(base), batch_size=profile.batch_size, seq_len=profile.seq_len,
                         lr=profile.sft_lr, eval_max_batches=profile.eval_max_batches, progress=progress)
    design = Li2025(base_fraction=profile.perturb_tokens_per_domain * len(domains) / profile.target_tokens,
                    perturbation_evals=0)
    _log("3/6", f"li2025 perturbation runs: base {profile.perturb_tokens_per_domain:,} tokens per domain, "
                "each domain x 0.25, 0.5, 2, 3")
    _, observations = run_sweep(design, "li2025", {}, data, profile.target_tokens, out / "skewed" / "sweep",
                                config, log=lambda s: _log("3/6", s))

    _log("4/6", "fitting the li2025 law to every run's loss on every domain")
    fitted = fit(laws.get("li2025"), observations, token_unit=1e6, budgets=list(profile.budgets),
                 options=FitOptions(n_bootstrap=20))
    write_json_atomic(out / "law.json", json.loads(json.dumps(fitted.to_json(), default=float)))
    quality = fitted.diagnostics
    r2 = {d: round(v["r2"], 3) for d, v in quality["domains"].items()}
    _log("4/6", f"fit: R^2 {r2}; {quality['message']}")
    result = optimize(fitted, list(profile.budgets))
    write_json_atomic(out / "weights.json", result.to_json())
    _log("5/6", "optimal weights against budget")
    print(table(result))
    for entry in quality.get("bootstrap", {}).get("results", []):
        spread = ", ".join(f"{d} {entry['weights_p05'][d]:.2f}-{entry['weights_p95'][d]:.2f}" for d in domains)
        print(f"  90% bootstrap interval at {entry['budget']:,.0f} tokens: {spread}")
    plots = plot(fitted, result, observations, str(out / "plots"), {})

    arms = {"optimised": {d: float(w) for d, w in zip(domains, result.weights[0])},
            "stratified": {d: 1 / len(domains) for d in domains}, "natural": natural}
    predicted = dict(zip(domains, result.predicted_loss[0].tolist()))
    verification = verify(config, data, arms, profile, out / "skewed" / "verify")
    summary_table = markdown_summary(domains, arms, verification, predicted, profile)
    print(summary_table)
    seconds = time.perf_counter() - started
    summary = {"profile": dataclasses.asdict(profile), "domains": domains, "optimised_weights": arms["optimised"],
               "predicted_loss": predicted, "baseline_weights": {"stratified": arms["stratified"], "natural": natural},
               **verification, "fit_r2": r2, "plots": plots, "seconds": round(seconds, 1)}
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", summary_table + "\n")
    print(f"plots: {', '.join(plots)}\nsummary: {out / 'summary.md'} ({seconds:.0f} s)")
    return summary


def verify(config, data, arms: dict, profile: DemoProfile, out: Path) -> dict:
    """Each arm's weights trained at the target budget once per seed (cached in OUT/<arm>-seed<s>);
    the per-seed validation losses, their means, and what the optimised weights save against each
    baseline: per seed (paired: the same seed's data order), mean, and its noise, the standard
    error of that mean over the seeds."""
    from mixjax.starter import cached_run

    _log("6/6", f"verification at {profile.target_tokens:,} tokens, seeds {', '.join(map(str, profile.seeds))}: "
                "optimised vs stratified weights and natural proportions")
    per_seed = {name: {} for name in arms}
    for seed in profile.seeds:
        seeded = dataclasses.replace(config, seed=seed)
        for name, weights in arms.items():
            run = cached_run(seeded, data, weights, profile.target_tokens, out / f"{name}-seed{seed}")
            per_seed[name][str(seed)] = run["val_loss"]
    totals = {name: np.array([sum(losses.values()) for losses in runs.values()]) for name, runs in per_seed.items()}
    saves = {}
    for name in ARMS[1:]:
        diffs = totals[name] - totals["optimised"]
        noise = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
        saves[name] = {"mean": float(diffs.mean()), "noise": noise, "per_seed": diffs.tolist()}
    mean_loss = {name: {d: float(np.mean([r[d] for r in runs.values()])) for d in data.domains}
                 for name, runs in per_seed.items()}
    return {"val_loss": mean_loss, "val_loss_per_seed": per_seed, "optimised_saves": saves,
            "total_per_seed": {name: t.tolist() for name, t in totals.items()}}


def verdict(mean: float, noise: float) -> str:
    """A difference read against its noise: outside it when more than twice the standard error."""
    if not np.isfinite(noise) or abs(mean) <= 2 * noise:
        return "within the seed noise"
    return "the optimised weights win" if mean > 0 else "the optimised weights lose"


def markdown_summary(domains, arms: dict, verification: dict, predicted: dict, profile: DemoProfile) -> str:
    """The verification table (mean over seeds) and the headline: each saving with its noise."""
    seeds = len(profile.seeds)
    rows = [f"| run ({profile.target_tokens:,} tokens) | " + " | ".join(f"{d} w" for d in domains) + " | " +
            " | ".join(f"{d} loss" for d in domains) + f" | total (mean ± sd, {seeds} seeds) |",
            "|---" * (2 * len(domains) + 2) + "|"]
    for name in ARMS:
        totals = np.array(verification["total_per_seed"][name])
        spread = f" ± {totals.std(ddof=1):.4f}" if len(totals) > 1 else ""
        rows.append(f"| {name} | " + " | ".join(f"{arms[name][d]:.3f}" for d in domains) + " | " +
                    " | ".join(f"{verification['val_loss'][name][d]:.4f}" for d in domains) +
                    f" | {totals.mean():.4f}{spread} |")
    rows.append("| li2025 prediction | " + " | ".join(f"{arms['optimised'][d]:.3f}" for d in domains) + " | " +
                " | ".join(f"{predicted[d]:.4f}" for d in domains) + f" | {sum(predicted.values()):.4f} |")
    rows.append("")
    rows.append(f"Total validation loss the optimised weights save (positive: they win; ± the standard error "
                f"over {seeds} paired seeds):")
    for name, s in verification["optimised_saves"].items():
        per_seed = ", ".join(f"{d:+.4f}" for d in s["per_seed"])
        rows.append(f"- against {name}: {s['mean']:+.4f} ± {s['noise']:.4f} nats (per seed {per_seed}): "
                    f"{verdict(s['mean'], s['noise'])}")
    return "\n".join(rows)
