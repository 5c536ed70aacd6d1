"""`mixjax sweep`: train an offline method's proposed runs into one observations CSV."""

from __future__ import annotations


def register(subparsers) -> None:
    from mixjax.commands.method_options import add_method_arguments
    from mixjax.commands.train import add_train_arguments
    from mixjax.methods import OFFLINE

    p = subparsers.add_parser(
        "sweep", help="train an offline method's proposed runs",
        description="Train the runs an offline method proposes (skipping finished ones) and collect "
                    "them in SWEEP_DIR/observations.csv. --shard i/n trains every n-th run from i, so "
                    "an array job can split the runs over hosts sharing SWEEP_DIR.")
    add_method_arguments(p, [m for m in OFFLINE if m != "stratified"])
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--budget-tokens", required=True, help="the target budget the method plans for")
    p.add_argument("--out", required=True, metavar="SWEEP_DIR")
    p.add_argument("--shard", default=None, metavar="i/n", help="train only runs i, i+n, i+2n, ...")
    add_train_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mixjax.commands.fit import check_output_path
    from mixjax.commands.method_options import method_options
    from mixjax.commands.train import enable_compilation_cache, parse_tokens, train_config_from_args
    from mixjax.data.prepared import PreparedData
    from mixjax.methods import get
    from mixjax.methods.sweep import parse_shard, run_sweep

    options = method_options(args)
    shard = parse_shard(args.shard)
    check_output_path(args.out, "--out", folder=True)
    budget = parse_tokens(args.budget_tokens, "--budget-tokens")
    config = train_config_from_args(args)
    enable_compilation_cache()
    data = PreparedData(args.data)
    method = get(args.method, len(data.domains), **options)
    runs, observations = run_sweep(method, args.method, options, data, budget, args.out, config, shard=shard)
    print(f"{len(observations.runs)}/{len(runs)} runs finished; wrote {args.out}/observations.csv")
    return 0
