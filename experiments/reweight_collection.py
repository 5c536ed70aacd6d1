"""Re-weighting a multi-source collection split into domains by a field (li2025's Tulu3/Orca experiment).

Li et al. split Tulu3 and OpenOrca into domains by source, fit their law to perturbation runs and
trained at the optimised weights instead of the collection's natural proportions. Here the same on
a small collection built from the bundled sources (dialogue, math, code, and as docs the dataset
descriptions shipped with tensorflow-datasets; one JSONL with a `source` field and unequal natural
proportions), or on a file you give (`--collection tulu3.jsonl --field source`; OpenOrca:
`--field id --split-prefix .`). The file is split into domains with mixjax's own preparation
(as `mixjax prepare --collection --split-field`), li2025's 1 + 4K perturbation runs are fitted,
the law is optimised at the budget (a domain's tokens capped at its train tokens x --max-epochs),
and the natural proportions, stratified and optimised weights are trained over the scale's seeds
and compared per domain and in total. How often each domain is repeated (epochs) is reported,
since the paper warns that high weights repeat a domain.

    python experiments/reweight_collection.py            # ~10 min on 2 CPU cores; reruns resume from --work
    python experiments/reweight_collection.py --quick    # a minute: checks the script end to end
    python experiments/reweight_collection.py --collection tulu3.jsonl --field source --dry-run
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

# The bundled collection: each source's share of --size-mb (unequal on purpose: natural
# proportions about 0.60 / 0.24 / 0.12 / 0.04; docs small enough that a quarter of the default
# budget repeats it about once).
BUNDLED_SHARES = {"dialogue": 0.5, "math": 0.2, "code": 0.1, "docs": 0.03}
ARMS = ("natural", "stratified", "optimised")


def build_bundled_collection(path: Path, size_mb: float, seed: int = 0, shares: dict | None = None) -> dict:
    """One shuffled JSONL of `messages` records with a `source` field, each source's share of
    `size_mb` from `shares` (default BUNDLED_SHARES); returns bytes per source."""
    from mixjax.data.bundled import write_collection

    return write_collection(path, size_mb, shares or BUNDLED_SHARES, seed)


def prepare_collection(path: Path, field: str, prefix: str | None, fmt: str | None, tokenizer: str,
                       out: Path, progress: bool):
    """Split the collection into domains by `field` with mixjax's preparation; the PreparedData."""
    from mixjax.data.formats import check_format_name
    from mixjax.data.prepare import PrepareOptions, SourceSpec, prepare
    from mixjax.data.prepared import PreparedData
    from mixjax.data.sources import source_files

    flag = f"--collection {path}"
    spec = SourceSpec(flag=flag, paths=source_files(path, flag), split_field=field, split_prefix_sep=prefix,
                      format=check_format_name(fmt) if fmt else None)
    try:
        prepare([spec], out, PrepareOptions(tokenizer=None if tokenizer == "byte" else tokenizer), progress=progress)
    except MixjaxError as e:
        if "missing split field" in str(e):
            raise MixjaxError(f"--field {field}: {e} (every record of --collection needs it)") from None
        raise
    data = PreparedData(out)
    if len(data.domains) < 2:
        raise MixjaxError(f"--field {field}: {path} splits into {len(data.domains)} domain(s) "
                          f"({', '.join(data.domains)}); re-weighting needs at least 2")
    return data


def train_config(args, scale, work: Path):
    """The fine-tuning config: from the cached tiny base model (byte tokenizer), or --init/--model."""
    from mixjax.train import TrainConfig

    if args.init or args.model:
        return TrainConfig(model=args.model, init=args.init, batch_size=scale.batch_size, seq_len=scale.seq_len,
                           lr=scale.sft_lr, eval_max_batches=scale.eval_max_batches, progress=False)
    from mixjax.starter import pretrained_base

    base = pretrained_base(work, scale.base_tokens, scale.batch_size, scale.seq_len, scale.base_lr,
                           text_mb=scale.size_mb, progress=not args.quiet, log=common.log)
    return TrainConfig(init=str(base), batch_size=scale.batch_size, seq_len=scale.seq_len, lr=scale.sft_lr,
                       eval_max_batches=scale.eval_max_batches, progress=False)


def model_text(args) -> str:
    if args.init:
        return f"`{args.model or 'the model'}` fine-tuned from `{args.init}`"
    if args.model:
        return f"`{args.model}` trained from scratch"
    return "tiny preset fine-tuned from the cached base model"


def markdown(scale, domains, sizes, natural, train_tokens, fitted, rows, diffs, cap, budget, n_runs,
             source_name, field, model, compute) -> str:
    diag = fitted.diagnostics
    lines = [f"Collection: {source_name}, split into {len(domains)} domains by its field `{field}`; {model} "
             f"(batch {scale.batch_size} x {scale.seq_len}), "
             f"{budget:,} tokens per run, {len(scale.seeds)} seed(s); li2025 fitted on {n_runs} perturbation "
             "runs (seed 0) and optimised at the budget. Validation loss is each domain's held-out split.", "",
             "Fit: " + ", ".join(f"{d} R^2 {v['r2']:.3f}" for d, v in diag["domains"].items())
             + f"; {diag['message']}.", "",
             "| weights | " + " | ".join(f"w {d}" for d in domains) + " | "
             + " | ".join(f"{d} loss" for d in domains) + " | total (measured, mean ± std) | total (law) |",
             "|---" * (2 * len(domains) + 3) + "|"]
    for arm, r in rows.items():
        lines.append(f"| {arm} | " + " | ".join(f"{r['weights'][d]:.3f}" for d in domains) + " | "
                     + " | ".join(f"{r['val_loss_mean'][d]:.4f} ± {r['val_loss_std'][d]:.4f}" for d in domains)
                     + f" | {r['total_mean']:.4f} ± {r['total_std']:.4f} | {r['predicted_total']:.4f} |")
    lines += ["", "Paired by seed (negative: optimised is lower):", ""]
    lines += [f"- {common.verdict(d, f'optimised minus {arm}')} (the law predicted {d['predicted']:+.4f})."
              for arm, d in diffs.items()]
    for arm in rows:
        if arm == "optimised":
            continue
        by_domain = {d: float(np.mean([rows["optimised"]["seeds"][s]["val_loss"][d] - r["val_loss"][d]
                                       for s, r in rows[arm]["seeds"].items()])) for d in domains}
        lower = sum(v < 0 for v in by_domain.values())
        lines.append(f"- Per domain, optimised minus {arm} (mean over seeds): "
                     + ", ".join(f"{d} {v:+.4f}" for d, v in by_domain.items())
                     + f" (lower on {lower} of {len(domains)} domains).")
    boot = diag.get("bootstrap", {}).get("results", [])
    if boot:
        lines.append("- 90% bootstrap interval of the optimised weights (the fit redone on resampled runs): "
                     + ", ".join(f"{d} {boot[0]['weights_p05'][d]:.2f}-{boot[0]['weights_p95'][d]:.2f}"
                                 for d in domains) + ".")
    lines += ["", f"### Repetition: epochs of each domain's train split ({budget:,}-token runs; the sampler's "
              "tokens in result.json / the domain's train tokens)", "",
              "| domain | train tokens | " + " | ".join(f"epochs ({arm})" for arm in rows) + " |",
              "|---" * (len(rows) + 2) + "|"]
    for d in domains:
        lines.append(f"| {d} | {train_tokens[d]:,} | "
                     + " | ".join(f"{rows[arm]['epochs'][d]:.2f}" for arm in rows) + " |")
    binding = [d for d in domains if rows["optimised"]["weights"][d] * budget >= cap * train_tokens[d] * (1 - 1e-6)]
    lines += ["", f"The optimiser was allowed at most {cap:g} epochs of any domain (--max-epochs)"
              + (f"; the cap binds for {', '.join(binding)}." if binding else "; the cap does not bind."),
              f"Natural proportions are the domains' shares of the collection's train tokens"
              + (f" (source bytes: {', '.join(f'{k} {v:,}' for k, v in sizes.items())})." if sizes else "."),
              "", f"Training: {compute['runs']} runs, {compute['tokens']:,} tokens, {compute['seconds'] / 60:.1f} min "
              "(the runs' own timings; a rerun reuses finished runs from --work)."]
    return "\n".join(lines)


def figures(domains, rows) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(domains))
    width = 0.8 / len(rows)
    for i, (arm, r) in enumerate(rows.items()):
        ax1.bar(x + i * width, [r["weights"][d] for d in domains], width, label=arm)
        ax2.bar(x + i * width, [r["val_loss_mean"][d] for d in domains], width,
                yerr=[r["val_loss_std"][d] for d in domains], capsize=3, label=arm)
    for ax, title in ((ax1, "weights"), (ax2, "validation loss (mean ± std over seeds)")):
        ax.set_xticks(x + width * (len(rows) - 1) / 2, domains)
        ax.set_title(title)
    lo = min(r["val_loss_mean"][d] for r in rows.values() for d in domains)
    hi = max(r["val_loss_mean"][d] for r in rows.values() for d in domains)
    ax2.set_ylim(lo - 0.1 * (hi - lo) - 0.02, hi + 0.1 * (hi - lo) + 0.02)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return {"losses": fig}


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.splitlines()[0], "reweight_collection", data_flags=False)  # --collection, --init
    p.add_argument("--collection", metavar="FILE", help="a .jsonl/.parquet file (or directory) to split into "
                   "domains (default: a collection built from the bundled sources)")
    p.add_argument("--field", metavar="FIELD", help="the record field naming each example's domain "
                   "(Tulu3: source; OpenOrca: id with --split-prefix .); the bundled collection's is 'source'")
    p.add_argument("--split-prefix", metavar="SEP", help="use only the text before SEP of the field")
    p.add_argument("--format", metavar="FORMAT", help="record format if detection from the first record is wrong "
                   "(messages, sharegpt, orca, openmath, alpaca, prompt_response, text)")
    p.add_argument("--tokenizer", default="byte", help="'byte' or a directory with tokenizer.json "
                   "(then --init or --model too)")
    p.add_argument("--init", metavar="DIR", help="fine-tune this HF directory or mixjax run instead of the "
                   "cached byte-level base model")
    p.add_argument("--model", metavar="PRESET|HF_DIR", help="model to train (default: the --init's or the base's)")
    p.add_argument("--max-epochs", type=float, default=10.0, help="cap on the optimised weights: a domain's tokens "
                   "<= its train tokens x this (default 10, the sampler's limit)")
    p.add_argument("--base-fraction", type=float, default=0.25, help="li2025's base run as a fraction of the budget")
    p.add_argument("--dry-run", action="store_true", help="prepare and split the collection, print its domains "
                   "and the runs the experiment would train, and stop")
    args = p.parse_args(argv)
    return common.exit_code("reweight_collection.py", lambda: run(args))


def run(args) -> int:
    from mixjax import laws
    from mixjax.fit import FitOptions, fit
    from mixjax.io import write_json_atomic
    from mixjax.methods.offline import Li2025
    from mixjax.runners.sweep import run_sweep
    from mixjax.optimize import optimize

    if args.collection and not args.field:
        raise MixjaxError("--collection needs --field (the record field that names each example's domain, "
                          "e.g. source)")
    if not args.max_epochs > 0:
        raise MixjaxError("--max-epochs: must be positive")
    if args.tokenizer != "byte" and not (args.init or args.model):
        raise MixjaxError("--tokenizer DIR needs --init HF_DIR (the model it belongs to) or --model PRESET "
                          "(trained from scratch); the cached base model is byte-level")
    scale = common.scale_from(args)
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = {}
    if args.collection:
        collection, field, source_name = Path(args.collection), args.field, f"`{args.collection}`"
    else:
        collection, field = work / "collection" / "collection.jsonl", args.field or "source"
        sizes = build_bundled_collection(collection, scale.size_mb)
        source_name = "the bundled collection (" + ", ".join(BUNDLED_SHARES) + ")"
    data = prepare_collection(collection, field, args.split_prefix, args.format, args.tokenizer, work / "data",
                              progress=not args.quiet)
    domains = list(data.domains)
    train_tokens = data.train_tokens()
    natural = common.natural_weights(data)
    design = Li2025(base_fraction=args.base_fraction)
    proposed = design.propose(domains, scale.budget)
    print(f"{len(domains)} domains from {collection} by '{field}':")
    for d in domains:
        print(f"  {d:<24s} {data.counts(d, 'train')['examples']:>8,} examples {train_tokens[d]:>12,} train tokens  "
              f"natural weight {natural[d]:.3f}")
    print(f"li2025: {len(proposed)} perturbation runs ({sum(r.budget_tokens for r in proposed):,} tokens), then "
          f"{len(ARMS)} weightings x {len(scale.seeds)} seed(s) x {scale.budget:,} tokens")
    if args.dry_run:
        return 0

    config = train_config(args, scale, work)
    common.log(f"li2025 perturbation runs ({len(proposed)})")
    _, obs = run_sweep(design, "li2025", {"base_fraction": args.base_fraction}, data, scale.budget,
                       work / "sweep", config, log=common.log)
    fitted = fit(laws.get("li2025"), obs, token_unit=1e6, budgets=[scale.budget], options=FitOptions())
    write_json_atomic(work / "law.json", json.loads(json.dumps(fitted.to_json(), default=float)))
    result = optimize(fitted, [scale.budget], available=train_tokens, max_epochs=args.max_epochs)
    write_json_atomic(work / "weights.json", result.to_json())
    optimised = dict(zip(domains, result.weights[0].tolist()))
    arms = {"natural": natural, "stratified": {d: 1 / len(domains) for d in domains}, "optimised": optimised}
    runs = common.train_arms(data, config, arms, scale.budget, scale.seeds, work / "runs", root=work)

    rows = {}
    for arm, by_seed in runs.items():
        losses = np.array([[r["val_loss"][d] for d in domains] for r in by_seed.values()])
        totals = losses.sum(1)
        tokens = np.array([[r["tokens"][d] for d in domains] for r in by_seed.values()], np.float64).mean(0)
        predicted = common.law_losses(fitted, arms[arm], scale.budget)
        mean, std = common.mean_std(totals)
        rows[arm] = {"weights": arms[arm], "val_loss_mean": dict(zip(domains, losses.mean(0).tolist())),
                     "val_loss_std": dict(zip(domains, (losses.std(0, ddof=1) if len(losses) > 1
                                                        else np.zeros(len(domains))).tolist())),
                     "total_mean": mean, "total_std": std, "totals": totals.tolist(),
                     "predicted_loss": predicted, "predicted_total": float(sum(predicted.values())),
                     "tokens": dict(zip(domains, tokens.tolist())),
                     "epochs": {d: float(tokens[j] / train_tokens[d]) for j, d in enumerate(domains)},
                     "seeds": {str(s): r for s, r in by_seed.items()}}
    diffs = {}
    for arm in ("natural", "stratified"):
        d = common.paired_difference(rows["optimised"]["totals"], rows[arm]["totals"])
        d["predicted"] = rows["optimised"]["predicted_total"] - rows[arm]["predicted_total"]
        diffs[arm] = d
    compute = common.training_compute([work / "sweep" / "runs" / name for name in obs.runs]
                                      + [work / r["run"] for by_seed in runs.values() for r in by_seed.values()])
    md = markdown(scale, domains, sizes, natural, train_tokens, fitted, rows, diffs, args.max_epochs,
                  scale.budget, len(obs.runs), source_name, field, model_text(args), compute)
    print(md)
    diag = fitted.diagnostics
    payload = {"scale": dataclasses.asdict(scale), "work": str(work), "collection": str(collection), "field": field,
               "split_prefix": args.split_prefix, "domains": domains, "source_bytes": sizes,
               "train_tokens": train_tokens, "natural_weights": natural, "max_epochs": args.max_epochs,
               "fit": {"runs": obs.runs, "tokens": obs.tokens.tolist(), "losses": obs.losses.tolist(),
                       "r2": {d: v["r2"] for d, v in diag["domains"].items()}, "message": diag["message"],
                       "bootstrap": diag.get("bootstrap")},
               "optimum": result.to_json()["results"][0], "rows": rows, "optimised_minus": diffs,
               "training": compute}
    name = "reweight_collection_quick" if args.quick else "reweight_collection"
    common.write_results(Path(args.results), name, payload, md, figures(domains, rows), time.perf_counter() - started)
    common.log(f"results in {args.results}/{name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
