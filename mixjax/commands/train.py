"""`mixjax train`: fine-tune a model on a weighted mixture of prepared domains."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mixjax.commands.config_file import add_config_argument, write_resolved
from mixjax.commands.flags import add_checkpoint_arguments, add_train_arguments, train_config_from_args
from mixjax.errors import MixjaxError
from mixjax.io import write_json_atomic
from mixjax.observations import weights_in_file
from mixjax.token_counts import parse_tokens, tokens_text


def parse_weights(text: str | None, flag: str = "--weights", budget: int | None = None,
                  warn=print) -> dict[str, float] | None:
    """NAME=W,NAME=W,... summing to 1, or a weights JSON file: a plain {name: weight} object or the
    output of `mixjax optimize`/`mix`, whose result for `budget` tokens is taken (FILE@BUDGET names
    one). The sampler checks the weights (sum, sign, names)."""
    return weights_and_source(text, flag, budget, warn)[0]


def weights_and_source(text: str | None, flag: str = "--weights", budget: int | None = None,
                       warn=print) -> tuple[dict[str, float] | None, dict | None]:
    """(weights, where they come from: {"file", "budget"} for a weights file, else None)."""
    if text is None:
        return None, None
    file_text, at, budget_text = (text.rpartition("@") if "@" in text and not Path(text).is_file()
                                  else (text, "", ""))
    path = Path(file_text)
    source = None
    if path.suffix == ".json" or path.is_file():
        try:
            obj = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MixjaxError(f"{flag}: cannot read {file_text}: {e}") from None
        chosen = parse_tokens(budget_text, f"{flag} {text}") if at else None
        weights, result_budget = result_for_budget(obj, chosen or budget, f"{flag}: {file_text}",
                                                   exact=chosen is not None, warn=warn)
        source = {"file": str(path), "budget": result_budget}
        if not isinstance(weights, dict):
            raise MixjaxError(f"{flag}: {file_text} holds no weights object")
    else:
        weights = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, eq, value = part.partition("=")
            try:
                if not eq or not name:
                    raise ValueError
                weights[name.strip()] = float(value)
            except ValueError:
                raise MixjaxError(f"{flag}: expected NAME=WEIGHT[,NAME=WEIGHT...], got {part!r}") from None
    try:
        weights = {str(k): float(v) for k, v in weights.items()}
    except (TypeError, ValueError):
        raise MixjaxError(f"{flag}: weights must be numbers") from None
    if not weights:
        raise MixjaxError(f"{flag}: no weights given")
    return weights, source


def result_for_budget(obj, budget: int | None, where: str, *, exact: bool = False,
                      warn=print) -> tuple[dict, float | None]:
    """(weights, the result's budget) of a parsed weights file for `budget` tokens. A file of
    results (`mixjax optimize`/`mix`) gives the result whose budget equals `budget`; with none, a
    file of several results (or `exact`) is a one-line error listing its budgets, and a file of one
    result is used with a one-line warning naming both budgets (a researcher training a little
    off the optimised budget usually means it). A plain {domain: weight} object has no budget."""
    if not (isinstance(obj, dict) and isinstance(obj.get("results"), list) and obj["results"]):
        return weights_in_file(obj, where), None
    results = obj["results"]
    budgets = [r.get("budget") if isinstance(r, dict) else None for r in results]
    known = [b for b in budgets if isinstance(b, (int, float)) and not isinstance(b, bool)]
    listed = ", ".join(tokens_text(b) for b in known) or "none"
    if budget is None:
        if len(results) > 1:
            raise MixjaxError(f"{where}: holds results for budgets {listed}; name one "
                              "(--budget-tokens, or FILE@BUDGET)")
        index = 0
    else:
        matches = [i for i, b in enumerate(budgets) if b in known and math.isclose(b, budget, rel_tol=1e-9)]
        if matches:
            index = matches[0]
        elif exact or len(results) > 1:
            raise MixjaxError(f"{where}: no result for {tokens_text(budget)} tokens; it has budgets {listed} "
                              f"(train at one of them, or pick one as FILE@BUDGET)")
        else:
            index = 0
            if budgets[0] in known:
                warn(f"warning: {where}: weights optimised for {tokens_text(budgets[0])} tokens, "
                     f"training {tokens_text(budget)}")
    weights = weights_in_file({"results": [results[index]]}, where)
    return weights, (budgets[index] if budgets[index] in known else None)


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
