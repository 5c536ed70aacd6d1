"""`mixjax demo`: the li2025 pipeline on the bundled domains, on a laptop CPU.

1. bundled domains (dialogue, math, code) -> prepared TFDS datasets;
2. a base model: the tiny preset pre-trained on generic text (the Python documentation shipped with
   the standard library), cached, since SFT starts from a pretrained model;
3. li2025's perturbation runs (1 + 4K), fine-tuned from the base model, each recording its final
   loss: they are 18-40 steps long, where the authors' best of 10 evaluations (`mixjax mix`'s
   default) would cost 2-4 times their training;
4. the law fitted to every run's loss on every domain, and its optimal weights at a few budgets;
5. a verification run at the optimised weights beside runs at stratified weights and at the data's
   natural proportions (what concatenating the files gives), at the same budget, and what the
   optimised weights save against each.
Every step is cached in the working directory, so a rerun (or an interrupted run) resumes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from mixjax.io import write_json_atomic, write_text_atomic


@dataclasses.dataclass(frozen=True)
class DemoProfile:
    size_mb: float = 2.0
    base_tokens: int = 600_000          # pre-training of the base model
    perturb_tokens_per_domain: int = 25_000
    target_tokens: int = 300_000        # the budget weights are verified at
    budgets: tuple = (300_000, 3_000_000, 30_000_000)
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    sft_lr: float = 1e-3
    eval_max_batches: int | None = 8    # validation batches per domain: the same 8 x 16 x 256 tokens each time


QUICK = DemoProfile(size_mb=0.1, base_tokens=16_384, perturb_tokens_per_domain=2048, target_tokens=8192,
                    budgets=(8192, 81_920), batch_size=8, seq_len=64)


def _log(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


def run_demo(out: str | Path, profile: DemoProfile = DemoProfile(), progress: bool = True) -> dict:
    from mixjax import laws
    from mixjax.fit import FitOptions, fit
    from mixjax.methods.offline import Li2025
    from mixjax.methods.sweep import run_sweep
    from mixjax.optimize import optimize
    from mixjax.report import plot, table
    from mixjax.starter import cached_run, prepare_bundled, pretrained_base
    from mixjax.train import TrainConfig

    started = time.perf_counter()
    out = Path(out)
    data = prepare_bundled(out, profile.size_mb, progress=progress, log=lambda s: _log("1/6", s))
    domains = data.domains
    base = pretrained_base(out, profile.base_tokens, profile.batch_size, profile.seq_len, profile.lr,
                           text_mb=profile.size_mb, progress=progress, log=lambda s: _log("2/6", s))

    config = TrainConfig(init=str(base), batch_size=profile.batch_size, seq_len=profile.seq_len,
                         lr=profile.sft_lr, eval_max_batches=profile.eval_max_batches, progress=progress)
    design = Li2025(base_fraction=profile.perturb_tokens_per_domain * len(domains) / profile.target_tokens,
                    perturbation_evals=0)
    _log("3/6", f"li2025 perturbation runs: base {profile.perturb_tokens_per_domain:,} tokens per domain, "
                "each domain x 0.25, 0.5, 2, 3")
    _, observations = run_sweep(design, "li2025", {}, data, profile.target_tokens, out / "sweep", config,
                                log=lambda s: _log("3/6", s))

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

    optimised = {d: float(w) for d, w in zip(domains, result.weights[0])}
    stratified = {d: 1 / len(domains) for d in domains}
    available = data.train_tokens()
    natural = {d: available[d] / sum(available.values()) for d in domains}  # what concatenating the files gives
    arms = {"optimised": optimised, "stratified": stratified, "natural": natural}
    _log("6/6", f"verification at {profile.target_tokens:,} tokens: optimised vs stratified and natural weights")
    runs = {name: cached_run(config, data, weights, profile.target_tokens, out / "verify" / name)
            for name, weights in arms.items()}
    rows = ["| run | " + " | ".join(f"{d} weight" for d in domains) + " | " +
            " | ".join(f"{d} val loss" for d in domains) + " | total |", "|---" * (2 * len(domains) + 2) + "|"]
    for name, r in runs.items():
        weights = arms[name]
        rows.append(f"| {name} | " + " | ".join(f"{weights[d]:.3f}" for d in domains) + " | " +
                    " | ".join(f"{r['val_loss'][d]:.4f}" for d in domains) +
                    f" | {sum(r['val_loss'].values()):.4f} |")
    predicted = dict(zip(domains, result.predicted_loss[0].tolist()))
    rows.append("| li2025 prediction | " + " | ".join(f"{optimised[d]:.3f}" for d in domains) + " | " +
                " | ".join(f"{predicted[d]:.4f}" for d in domains) + f" | {sum(predicted.values()):.4f} |")
    totals = {name: sum(r["val_loss"].values()) for name, r in runs.items()}
    gains = {name: totals[name] - totals["optimised"] for name in ("stratified", "natural")}
    rows.append("")
    rows.append("Total validation loss the optimised weights save (positive: they win): "
                + ", ".join(f"{gain:+.4f} nats against {name}" for name, gain in gains.items()) + ".")
    summary_table = "\n".join(rows)
    print(summary_table)
    seconds = time.perf_counter() - started
    summary = {"profile": dataclasses.asdict(profile), "domains": domains, "optimised_weights": optimised,
               "val_loss": {k: r["val_loss"] for k, r in runs.items()}, "predicted_loss": predicted,
               "baseline_weights": {"stratified": stratified, "natural": natural}, "optimised_saves": gains,
               "fit_r2": r2, "plots": plots, "seconds": round(seconds, 1)}
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", summary_table + "\n")
    print(f"plots: {', '.join(plots)}\nsummary: {out / 'summary.md'} ({seconds:.0f} s)")
    return summary
