"""`mixjax demo`: the pipeline on the bundled domains, on a laptop CPU.

Today it runs the data part (bundled domains -> prepared TFDS datasets -> mixed packed batches);
training, fitting and optimising join as those parts land.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the pipeline on the bundled domains",
                              description="Write the bundled domains, prepare them, and show a weighted "
                                          "mixture stream. Reruns reuse what is already prepared.")
    p.add_argument("--out", default="mixjax_demo", help="working directory (default ./mixjax_demo)")
    p.add_argument("--size-mb", type=float, default=2.0, help="text per bundled domain, in MB")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from mixjax.commands.prepare import format_manifest
    from mixjax.data.bundled import BUILDERS, write_bundled
    from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
    from mixjax.data.prepared import PreparedData
    from mixjax.data.sampler import MixtureSampler

    out = Path(args.out)
    sources = out / "sources"
    if not all((sources / f"{d}.jsonl").is_file() for d in BUILDERS):
        print(f"[1/3] writing the bundled domains to {sources}")
        write_bundled(sources, int(args.size_mb * 1e6))
    else:
        print(f"[1/3] bundled domains already in {sources}")
    print(f"[2/3] preparing them into {out / 'data'}")
    specs = [parse_domain_flag(f"{d}={sources / (d + '.jsonl')}") for d in BUILDERS]
    print(format_manifest(prepare(specs, out / "data", PrepareOptions())))
    data = PreparedData(out / "data")
    weights = {"dialogue": 0.5, "math": 0.3, "code": 0.2}
    print(f"[3/3] a mixture stream at weights {weights}, batches of 16 x 256 tokens")
    sampler = MixtureSampler(data, weights, batch_size=16, seq_len=256, budget_tokens=16 * 256 * 50)
    total = sum(b.tokens_per_domain for b in sampler)
    share = total / total.sum()
    print("  tokens per domain over 50 batches: " +
          ", ".join(f"{d} {n:,} ({s:.4f})" for d, n, s in zip(data.domains, total.tolist(), share)))
    assert np.allclose(share, [weights[d] for d in data.domains], atol=1e-3)
    return 0
