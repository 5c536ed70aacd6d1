"""`mixjax demo`: the li2025 pipeline on the skewed bundled collection (see mixjax/demo.py)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the li2025 pipeline on bundled domains of unequal sizes, minutes on a CPU",
                              description="Prepare the skewed bundled collection (dialogue, code and dataset "
                                          "descriptions at natural proportions about 0.77/0.18/0.05), "
                                          "pre-train a tiny base model, run li2025's perturbation runs, fit "
                                          "the law, optimise the weights at several budgets and verify them "
                                          "against stratified weights and natural proportions over two "
                                          "seeds. Everything is cached in --out; a rerun resumes.")
    p.add_argument("--out", default="mixjax_demo", help="working directory (default ./mixjax_demo)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run on tiny data")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mixjax.demo import QUICK, DemoProfile, run_demo
    from mixjax.train.compilation_cache import enable_compilation_cache

    enable_compilation_cache()

    run_demo(args.out, QUICK if args.quick else DemoProfile(), progress=not args.quiet)
    return 0
