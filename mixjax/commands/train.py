"""`mixjax train`: fine-tune a model on a weighted mixture of prepared domains."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mixjax.commands.config_file import add_config_argument, write_resolved
from mixjax.errors import MixjaxError
from mixjax.observations import weights_in_file
from mixjax.plan import parse_mesh  # the one --mesh parser (sizes >= 1, at most one -1); no jax import


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


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The model / optimisation flags (shared with commands that train, e.g. sweep and mix)."""
    p.add_argument("--model", default=None,
                   help="preset (tiny, small, base, 1b, qwen2.5-0.5b, qwen2.5-1.5b, llama-3.2-3b, "
                        "llama-3.1-8b) or a Hugging Face directory (default: tiny, or --init's model)")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from a mixjax run/checkpoint directory or a Hugging Face directory")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine")
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up: fraction of steps if < 1, else steps")
    p.add_argument("--final-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute (float32 master weights)")
    p.add_argument("--loss-chunk", type=int, default=None,
                   help="cross-entropy over this many positions at a time, so a big vocabulary's logits "
                        "never exist for the whole sequence (must divide --seq-len)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=float, default=10, help="most times a domain may be repeated")
    p.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: at the end)")
    p.add_argument("--eval-max-batches", type=int, default=None, help="validation batches per domain")
    p.add_argument("--mesh", default=None, metavar="D,F,T", help="mesh (data, fsdp, tensor); default all data")
    p.add_argument("--attention", default=None, metavar="IMPL",
                   help="auto|plain|blockwise|cudnn|pallas (default auto: the backend's best; blockwise "
                        "and the fused kernels never keep sequence x sequence scores)")
    p.add_argument("--remat", default=None, metavar="POLICY",
                   help="none|dots|full: recompute each layer in the backward pass (dots keeps the "
                        "projections, full only the layer inputs); default none")
    p.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=None,
                   help="scan over the layers (compile time flat in depth) or unroll them (faster "
                        "steps for shallow models); default: scan models of more than 4 layers")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def train_config_from_args(args):
    from mixjax.train import TrainConfig

    for flag, v in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len), ("--grad-accum", args.grad_accum)):
        if v < 1:
            raise MixjaxError(f"{flag} must be >= 1")
    check_number("--lr", args.lr, strict=True)
    check_number("--max-epochs", args.max_epochs, strict=True)
    for flag, v in (("--warmup", args.warmup), ("--final-lr-ratio", args.final_lr_ratio),
                    ("--weight-decay", args.weight_decay), ("--clip-norm", args.clip_norm)):
        check_number(flag, v)
    for flag, v in (("--eval-every", args.eval_every), ("--checkpoint-every", getattr(args, "checkpoint_every", 0))):
        if v < 0:
            raise MixjaxError(f"{flag} must be >= 0 (0: {'at the end' if flag == '--eval-every' else 'none'})")
    return TrainConfig(
        model=args.model, init=args.init, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
        schedule=args.schedule, warmup=args.warmup, final_lr_ratio=args.final_lr_ratio,
        weight_decay=args.weight_decay, clip_norm=args.clip_norm or None, grad_accum=args.grad_accum,
        compute_dtype="bfloat16" if args.bf16 else "float32", loss_chunk=args.loss_chunk, seed=args.seed, max_epochs=args.max_epochs,
        eval_every=args.eval_every, eval_max_batches=args.eval_max_batches,
        keep_best=getattr(args, "keep_best", False), checkpoint_every=getattr(args, "checkpoint_every", 0),
        resume=not getattr(args, "no_resume", False), mesh_shape=parse_mesh(args.mesh),
        progress=not args.quiet, model_overrides=execution_overrides(args))


def execution_overrides(args) -> dict:
    """The model fields set by --attention, --remat and --[no-]scan-layers (checked here, so a bad
    value is a one-line error before any data is read)."""
    from mixjax.model.config import check_execution

    given = {k: getattr(args, k, None) for k in ("attention", "remat", "scan_layers")}
    check_execution(given["attention"], given["remat"])
    return {k: v for k, v in given.items() if v is not None}


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
    p.add_argument("--keep-best", action="store_true",
                   help="keep the checkpoint with the lowest mean validation loss and report its losses")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0 = none)")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in RUN_DIR")
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
