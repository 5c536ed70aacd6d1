"""`mixjax train`: fine-tune a model on a weighted mixture of prepared domains."""

from __future__ import annotations

from pathlib import Path

from mixjax.commands.config_file import add_config_argument, write_resolved
from mixjax.commands.flags import add_checkpoint_arguments, add_train_arguments, train_config_from_args
from mixjax.errors import MixjaxError
from mixjax.io import write_json_atomic
from mixjax.mixture import weights_and_source
from mixjax.token_counts import parse_tokens, tokens_text


def describe_weights(weights: dict[str, float], source: dict | None) -> str:
    """One line: the weights a run trains with and where they come from."""
    shown = ", ".join(f"{d}={w:.4f}" for d, w in weights.items())
    if source is None:
        return f"weights: {shown}"
    origin = source["file"] + (f", optimised for {tokens_text(source['budget'])} tokens"
                               if source.get("budget") is not None else "")
    return f"weights: {shown} (from {origin})"


def check_output_dir(path: str | Path, flag: str) -> None:
    """Refuse an output directory that is an existing file, or lies under one (before any work)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "an existing file" if p == path else f"{p} is a file"
                raise MixjaxError(f"{flag} {path}: {what}, not a directory")
            return


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="fine-tune a model on a weighted mixture of prepared domains",
        description="Train on a mixture of the prepared domains for a token budget and report each "
                    "domain's validation loss in RUN_DIR/result.json (also metrics.jsonl, checkpoints). "
                    "Multi-host: launch one process per host with MIXJAX_DISTRIBUTED=1 (or under SLURM "
                    "with several tasks); jax.distributed.initialize() is then called.")
    p.add_argument("--data", required=True, help="prepared data directory (`mixjax prepare`)")
    p.add_argument("--weights", default=None, metavar="NAME=W,...",
                   help="domain weights summing to 1 (domains left out get 0), or a weights JSON file "
                        "(`mixjax optimize`'s: its result for --budget-tokens; FILE@BUDGET picks "
                        "another); default uniform")
    p.add_argument("--budget-tokens", required=True, help="training tokens (e.g. 5e6 or 5M)")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    add_train_arguments(p)
    add_checkpoint_arguments(p)
    p.add_argument("--export-hf", default=None, metavar="DIR",
                   help="also write the final (or best) model as a Hugging Face directory")
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mixjax.data.prepared import PreparedData
    from mixjax.report import random_start_note
    from mixjax.train import FINAL_CHECKPOINT_ONLY, run_training
    from mixjax.train.compilation_cache import enable_compilation_cache

    check_output_dir(args.out, "--out")
    if args.export_hf:
        check_output_dir(args.export_hf, "--export-hf")
    budget = parse_tokens(args.budget_tokens, "--budget-tokens")
    weights, source = weights_and_source(args.weights, budget=budget)
    cfg = train_config_from_args(args)
    if args.export_hf and not (cfg.keep_best or cfg.checkpoint_every):
        cfg.checkpoint_every = FINAL_CHECKPOINT_ONLY  # a final checkpoint to export from
    data = PreparedData(args.data)
    enable_compilation_cache()
    if random_start_note(cfg):
        print(random_start_note(cfg))
    if weights is None:
        weights = {d: 1.0 / len(data.domains) for d in data.domains}
        print(describe_weights(weights, None) + " (uniform: no --weights)")
    else:
        print(describe_weights(weights, source))
    # RUN_DIR's result.json or checkpoints of another run (weights, budget, data, settings) are
    # refused; the same command again resumes its checkpoints, or reports the finished run.
    result = run_training(cfg, data, weights, budget, out_dir=args.out, check_result=True)
    if source is not None and result.get("weights_from") != source:  # result.json says which file's result
        result["weights_from"] = source
        write_json_atomic(Path(args.out) / "result.json", result)
    if args.export_hf:
        from mixjax.train import export_hf
        export_hf(args.out, args.export_hf)
    write_resolved(args, args.out)
    val = ", ".join(f"{d}={v:.4f}" for d, v in result["val_loss"].items())
    print(f"trained {result['steps']} steps, {sum(result['tokens'].values()):,} tokens; val_loss: {val}")
    print(f"wrote {Path(args.out) / 'result.json'}")
    return 0
