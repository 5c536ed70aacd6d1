"""Forward + backward of packed causal attention on the CPU: the textbook reference vs blockwise.

Times jax.grad of a linear functional of `packed_attention` (B=1, H=4 query heads over K=2 kv
heads, E=32, two segments per row plus padding) at each length, alternating the implementations
round by round, and reads XLA's temporary bytes of each compiled step. The load average before
and after is recorded: another process on the machine skews the times.

    python benchmarks/bench_attention_impls.py [--lengths 1024,2048] [--rounds 7] [--block 512]

Writes benchmarks/results/attention_impls.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixjax import host_memory  # noqa: E402,F401  (before JAX starts, like the trainer)
from mixjax.io import write_json_atomic  # noqa: E402

IMPLS = ("reference", "blockwise")
B, H, K, E = 1, 4, 2, 32


def step_fn(impl: str, block: int):
    import jax
    from mixjax.kernels.attention import packed_attention

    def grads(q, k, v, seg, w):
        def loss(q, k, v):
            return (packed_attention(q, k, v, seg, impl=impl, block_q=block, block_k=block) * w).sum()
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    return jax.jit(grads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention_impls.json"))
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    results = {"shape": {"B": B, "H": H, "K": K, "E": E}, "block": args.block, "rounds": args.rounds,
               "cpu_count": os.cpu_count(), "jax": jax.__version__, "load_before": os.getloadavg(),
               "command": "python benchmarks/bench_attention_impls.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
               "lengths": {}}
    for l in (int(x) for x in args.lengths.split(",")):
        ks = jax.random.split(jax.random.key(0), 4)
        q = jax.random.normal(ks[0], (B, l, H, E))
        k, v = (jax.random.normal(kk, (B, l, K, E)) for kk in ks[1:3])
        w = jax.random.normal(ks[3], (B, l, H, E))
        seg = np.zeros((B, l), np.int32)
        seg[:, : l // 3], seg[:, l // 3: l - l // 8] = 1, 2  # two documents, then padding (0)
        seg = jnp.asarray(seg)
        compiled, times = {}, {impl: [] for impl in IMPLS}
        for impl in IMPLS:
            compiled[impl] = step_fn(impl, args.block).lower(q, k, v, seg, w).compile()
            jax.block_until_ready(compiled[impl](q, k, v, seg, w))  # warm-up
        for _ in range(args.rounds):
            for impl in IMPLS:
                t = time.perf_counter()
                jax.block_until_ready(compiled[impl](q, k, v, seg, w))
                times[impl].append(time.perf_counter() - t)
        row = {}
        for impl in IMPLS:
            temp = compiled[impl].memory_analysis().temp_size_in_bytes
            row[impl] = {"median_ms": 1000 * statistics.median(times[impl]),
                         "all_ms": [1000 * t for t in times[impl]], "xla_temp_bytes": temp}
            print(f"L={l:5d} {impl:9s} fwd+bwd median {row[impl]['median_ms']:8.1f} ms   "
                  f"XLA temp {temp / 2**20:8.1f} MiB")
        results["lengths"][str(l)] = row
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    write_json_atomic(args.out, results)  # makes the folder too
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
