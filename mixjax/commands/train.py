"""`mixjax train`: fine-tune a model on a weighted mixture of prepared domains."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mixjax.commands.config_file import add_config_argument, write_resolved
from mixjax.commands.flags import add_checkpoint_arguments, add_train_arguments, config_values
from mixjax.errors import MixjaxError
from mixjax.observations import weights_in_file


def parse_weights(text: str | None, flag: str = "--weights") -> dict[str, float] | None:
    """NAME=W,NAME=W,... summing to 1, or a weights JSON file (`mixjax optimize` output, first
    result, or a plain {name: weight} object). The sampler checks the weights (sum, sign, names)."""
    if text is None:
        return None
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        try:
            obj = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MixjaxError(f"{flag}: cannot read {text}: {e}") from None
        weights = weights_in_file(obj, f"{flag}: {text}")
        if not isinstance(weights, dict):
            raise MixjaxError(f"{flag}: {text} holds no weights object")
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
    return weights


def parse_tokens(text: str, flag: str) -> int:
    try:
        mult = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}.get(text[-1:].lower(), 1)
        value = float(text[:-1] if mult != 1 else text) * mult
    except ValueError:
        raise MixjaxError(f"{flag}: expected a number of tokens (e.g. 5e6 or 5M), got {text!r}") from None
    if not math.isfinite(value):
        raise MixjaxError(f"{flag}: expected a finite number of tokens (e.g. 5e6 or 5M), got {text!r}")
    if value <= 0:
        raise MixjaxError(f"{flag}: must be positive")
    return int(value)


def check_number(flag: str, value: float, *, minimum: float = 0.0, strict: bool = False) -> None:
    """A one-line error unless value is finite and >= minimum (> minimum when strict)."""
    if not (math.isfinite(value) and (value > minimum if strict else value >= minimum)):
        bound = f"{'>' if strict else '>='} {minimum:g}"
        raise MixjaxError(f"{flag} must be a finite number {bound}, got {value}")


def check_output_dir(path: str | Path, flag: str) -> None:
    """Refuse an output directory that is an existing file, or lies under one (before any work)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "an existing file" if p == path else f"{p} is a file"
                raise MixjaxError(f"{flag} {path}: {what}, not a directory")
            return


def train_config_from_args(args):
    """The TrainConfig of the parsed flags (mixjax.commands.flags), checked first."""
    from mixjax.train import TrainConfig

    for flag, v in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len), ("--grad-accum", args.grad_accum)):
        if v < 1:
            raise MixjaxError(f"{flag} must be >= 1")
    check_number("--lr", args.lr, strict=True)
    check_number("--max-epochs", args.max_epochs, strict=True)
    for flag, v in (("--warmup", args.warmup), ("--final-lr-ratio", args.final_lr_ratio),
                    ("--weight-decay", args.weight_decay), ("--clip-norm", args.clip_norm)):
        check_number(flag, v)
    if args.eval_every < 0:
        raise MixjaxError("--eval-every must be >= 0 (0: at the end)")
    if getattr(args, "checkpoint_every", 0) < 0:
        raise MixjaxError("--checkpoint-every must be >= 0 (0: none)")
    return TrainConfig(**config_values(args))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="fine-tune a model on a weighted mixture of prepared domains",
        description="Train on a mixture of the prepared domains for a token budget and report each "
                    "domain's validation loss in RUN_DIR/result.json (also metrics.jsonl, checkpoints). "
                    "Multi-host: launch one process per host with MIXJAX_DISTRIBUTED=1 (or under SLURM "
                    "with several tasks); jax.distributed.initialize() is then called.")
    p.add_argument("--data", required=True, help="prepared data directory (`mixjax prepare`)")
    p.add_argument("--weights", default=None, metavar="NAME=W,...",
                   help="domain weights summing to 1 (domains left out get 0), or a weights JSON file; "
                        "default uniform")
    p.add_argument("--budget-tokens", required=True, help="training tokens (e.g. 5e6 or 5M)")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    add_train_arguments(p)
    add_checkpoint_arguments(p)
    p.add_argument("--export-hf", default=None, metavar="DIR",
                   help="also write the final (or best) model as a Hugging Face directory")
    add_config_argument(p)
    p.set_defaults(func=run)


def enable_compilation_cache() -> None:
    """Keep compiled steps on disk (MIXJAX_JAX_CACHE, default ~/.cache/mixjax/jax; empty = off),
    so repeated `mixjax train` runs of one shape skip most of the compilation."""
    import os

    import jax

    path = os.environ.get("MIXJAX_JAX_CACHE", os.path.expanduser("~/.cache/mixjax/jax"))
    if path and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(args) -> int:
    from mixjax.data.prepared import PreparedData
    from mixjax.train import FINAL_CHECKPOINT_ONLY, run_training

    check_output_dir(args.out, "--out")
    if args.export_hf:
        check_output_dir(args.export_hf, "--export-hf")
    budget = parse_tokens(args.budget_tokens, "--budget-tokens")
    weights = parse_weights(args.weights)
    cfg = train_config_from_args(args)
    if args.export_hf and not (cfg.keep_best or cfg.checkpoint_every):
        cfg.checkpoint_every = FINAL_CHECKPOINT_ONLY  # a final checkpoint to export from
    data = PreparedData(args.data)
    enable_compilation_cache()
    if weights is None:
        weights = {d: 1.0 / len(data.domains) for d in data.domains}
    # RUN_DIR's result.json or checkpoints of another run (weights, budget, data, settings) are
    # refused; the same command again resumes its checkpoints, or reports the finished run.
    result = run_training(cfg, data, weights, budget, out_dir=args.out, check_result=True)
    if args.export_hf:
        from mixjax.train import export_hf
        export_hf(args.out, args.export_hf)
    write_resolved(args, args.out)
    val = ", ".join(f"{d}={v:.4f}" for d, v in result["val_loss"].items())
    print(f"trained {result['steps']} steps, {sum(result['tokens'].values()):,} tokens; val_loss: {val}")
    print(f"wrote {Path(args.out) / 'result.json'}")
    return 0
