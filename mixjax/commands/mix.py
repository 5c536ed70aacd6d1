"""`mixjax mix`: run a mixture method end to end and train at its weights."""

from __future__ import annotations


def register(subparsers) -> None:
    from mixjax.commands.config_file import add_config_argument
    from mixjax.commands.method_options import add_method_arguments
    from mixjax.commands.flags import add_train_arguments
    from mixjax.methods import names

    p = subparsers.add_parser(
        "mix", help="run a mixture method end to end",
        description="Offline methods: train their runs, recommend weights, train a final run at them. "
                    "Online methods: one run whose weights the method sets as it trains. Writes "
                    "MIX_DIR/weights.json and MIX_DIR/final/result.json.")
    add_method_arguments(p, names())
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--budget-tokens", required=True, help="tokens of the final run")
    p.add_argument("--out", required=True, metavar="MIX_DIR")
    add_train_arguments(p)
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mixjax.commands.flags import train_config_from_args
    from mixjax.commands.method_options import method_options
    from mixjax.data.prepared import PreparedData
    from mixjax.io import check_output_path
    from mixjax.report import random_start_note
    from mixjax.runners.mix import run_mix
    from mixjax.token_counts import parse_tokens
    from mixjax.train.compilation_cache import enable_compilation_cache

    options = method_options(args)
    budget = parse_tokens(args.budget_tokens, "--budget-tokens")
    check_output_path(args.out, "--out", folder=True)
    config = train_config_from_args(args)
    enable_compilation_cache()
    data = PreparedData(args.data)
    if random_start_note(config):
        print(random_start_note(config))
    summary = run_mix(args.method, options, data, budget, args.out, config,
                      eval_max_batches=args.online_eval_batches)
    from mixjax.commands.config_file import write_resolved

    write_resolved(args, args.out)
    result = summary["results"][0]
    print("weights: " + ", ".join(f"{d}={w:.4f}" for d, w in result["weights"].items()))
    from mixjax.report import mix_lines

    for line in mix_lines(summary):
        print(line)
    print("final val_loss: " + ", ".join(f"{d}={v:.4f}" for d, v in result["val_loss"].items()))
    print(f"wrote {args.out}/weights.json and {args.out}/final/result.json")
    return 0
