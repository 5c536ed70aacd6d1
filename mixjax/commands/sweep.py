"""`mixjax sweep`: train an offline method's proposed runs into one observations CSV."""

from __future__ import annotations


def register(subparsers) -> None:
    from mixjax.commands.config_file import add_config_argument
    from mixjax.commands.method_options import add_method_arguments
    from mixjax.commands.flags import add_train_arguments
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
    p.add_argument("--run-list", metavar="RUNS.json",
                   help="train these runs (the file `mixjax next` writes) instead of the method's own "
                        "proposals, with the method's run settings")
    add_train_arguments(p)
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mixjax.commands.flags import train_config_from_args
    from mixjax.commands.method_options import method_options
    from mixjax.data.prepared import PreparedData
    from mixjax.errors import MixjaxError
    from mixjax.io import check_output_path
    from mixjax.methods import get
    from mixjax.report import random_start_note
    from mixjax.runners.sweep import RunList, parse_shard, read_run_list, run_sweep
    from mixjax.token_counts import parse_tokens
    from mixjax.train.compilation_cache import enable_compilation_cache

    options = method_options(args)
    shard = parse_shard(args.shard)
    check_output_path(args.out, "--out", folder=True)
    budget = parse_tokens(args.budget_tokens, "--budget-tokens")
    config = train_config_from_args(args)
    enable_compilation_cache()
    data = PreparedData(args.data)
    if random_start_note(config):
        print(random_start_note(config))
    method = get(args.method, len(data.domains), **options)
    if args.run_list:
        if method.adaptive:
            raise MixjaxError("--run-list: the runs of an --adaptive sweep are chosen as it goes; give one or the other")
        method = RunList(read_run_list(args.run_list, data.domains), like=method)
    elif not method.adaptive:
        from mixjax.runners.mix import announce_design

        proposed = method.propose(list(data.domains), budget)  # asked once: the runs announced are those trained
        announce_design(proposed, budget, method, args.method)
        method = RunList(proposed, like=method)
    if method.adaptive:
        from mixjax.runners.adaptive_sweep import run_adaptive_sweep

        if shard != (0, 1):
            raise MixjaxError("--shard: an adaptive sweep trains one run at a time (each chosen from the "
                              "runs before it); run it without --shard")
        runs, observations, _ = run_adaptive_sweep(method, args.method, options, data, budget, args.out, config)
    else:
        runs, observations = run_sweep(method, args.method, options, data, budget, args.out, config, shard=shard)
    from mixjax.commands.config_file import write_resolved

    write_resolved(args, args.out)
    print(f"{len(observations.runs)}/{len(runs)} runs finished; wrote {args.out}/observations.csv")
    return 0
