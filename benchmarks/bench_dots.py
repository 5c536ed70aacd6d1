"""The three matmuls of a projection's train step on XLA CPU, and the transposed weight gradient.

For y = x @ w with x [N, D] (N = batch x sequence tokens) and w [D, F], training runs
    forward  y  = x @ w        row-major dot
    dx       dx = dy @ w^T     the weight's transpose (YNNPACK handles a transposed right operand)
    dw       dw = x^T @ dy     contracts the token axis of both x and dy
XLA CPU hands the last one to Eigen. mixjax's `project` instead transposes the narrower operand
explicitly and runs a row-major dot (mixjax/kernels/cpu.py). This times each form, with the
library XLA picked (from the compiled HLO), at the tiny and small presets' shapes.

Also the batched dots of attention (per batch element and KV head: rows = query heads per KV head
x query positions, head dim 32, 256 keys), for several row counts at the same total work: compare
a run on both cores with a `taskset -c 0` run to see which of them use the second core; and
attention's value gradient with the weights [rows, keys] (autodiff: Eigen) or [keys, rows]
(mixjax's `attend`: YNNPACK).

    python benchmarks/bench_dots.py            # both threads
    taskset -c 0 python benchmarks/bench_dots.py --out benchmarks/results/dots_1thread.json

Writes benchmarks/results/dots.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixjax import host_memory  # noqa: E402  (before JAX starts, like the trainer)
from mixjax.io import write_json_atomic  # noqa: E402

SHAPES = {"tiny gate/up": (4096, 128, 512), "tiny down": (4096, 512, 128), "tiny attn": (4096, 128, 128),
          "small gate/up": (4096, 256, 768), "small down": (4096, 768, 256), "small attn": (4096, 256, 256)}


def library(hlo: str) -> str:
    """Which library the compiled module's dot went to."""
    if "__ynn_fusion" in hlo:
        return "ynnpack"
    if "__xnn" in hlo:
        return "xnnpack"
    return "eigen"


def timed(f, args, reps=10, rounds=7) -> float:
    import jax

    for _ in range(3):
        jax.block_until_ready(f(*args))
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            r = f(*args)
        jax.block_until_ready(r)
        out.append((time.perf_counter() - t) / reps)
    return statistics.median(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dots.json"))
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    tok = (((0,), (0,)), ((), ()))
    forms = {
        "forward x @ w": lambda x, dy, w: x @ w,
        "dx = dy @ w^T": lambda x, dy, w: jax.lax.dot_general(dy, w, (((1,), (1,)), ((), ()))),
        "dw = x^T dy (XLA default)": lambda x, dy, w: jax.lax.dot_general(x, dy, tok),
        "dw = transpose(x) @ dy": lambda x, dy, w: jax.lax.optimization_barrier(x.T) @ dy,
        "dw = (transpose(dy) @ x)^T": lambda x, dy, w: jax.lax.optimization_barrier(
            jax.lax.optimization_barrier(dy.T) @ x).T,
    }
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results = {"threads": threads, "malloc_tuned": host_memory.applied(), "shapes": {},
               "command": "python benchmarks/bench_dots.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"{threads} thread(s); GFLOP/s of each form (2 N D F FLOPs)")
    rng = np.random.default_rng(0)
    for name, (n, d, f) in SHAPES.items():
        x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
        dy = jnp.asarray(rng.standard_normal((n, f)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((d, f)), jnp.float32)
        row = {}
        print(f"\n{name}: N={n} D={d} F={f}")
        for form, fn in forms.items():
            jf = jax.jit(fn)
            s = timed(jf, (x, dy, w))
            lib = library(jf.lower(x, dy, w).compile().as_text())
            row[form] = {"ms": 1000 * s, "gflops": 2 * n * d * f / s / 1e9, "library": lib}
            print(f"  {form:28s} {1000 * s:7.2f} ms {2 * n * d * f / s / 1e9:7.1f} GFLOP/s  ({lib})")
        results["shapes"][name] = row
    results["attention_dots"] = {}
    print("\nattention batched dots: batch x rows = 16,384 query rows, 256 keys, head dim 32")
    for rows in (128, 256, 512, 1024):
        batch, s, e = 16384 // rows, 256, 32
        q = jnp.asarray(rng.standard_normal((batch, rows, e)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((batch, s, e)), jnp.float32)
        p = jnp.asarray(rng.standard_normal((batch, rows, s)), jnp.float32)
        flops = 2 * batch * rows * s * e
        qk = timed(jax.jit(lambda q, k: jnp.einsum("bme,bse->bms", q, k)), (q, k))
        pv = timed(jax.jit(lambda p, v: jnp.einsum("bms,bse->bme", p, v)), (p, k))
        results["attention_dots"][f"batch {batch} x rows {rows}"] = {
            "scores_gflops": flops / qk / 1e9, "weighted_values_gflops": flops / pv / 1e9}
        print(f"  batch {batch:3d} x {rows:4d} rows: q k^T {flops / qk / 1e9:6.1f} GFLOP/s, "
              f"p v {flops / pv / 1e9:6.1f} GFLOP/s")
    # dV = P^T dO (and dK = dS^T Q) contract the query rows: autodiff of [rows, keys] weights gives
    # Eigen a dot over both operands' major axis; keys-major weights (mixjax's `attend`) make it
    # a row-major dot.
    batch, rows, s, e = 128, 128, 256, 32
    flops = 2 * batch * rows * s * e
    p_mxs = jnp.asarray(rng.standard_normal((batch, rows, s)), jnp.float32)
    p_sxm = jnp.asarray(rng.standard_normal((batch, s, rows)), jnp.float32)
    do = jnp.asarray(rng.standard_normal((batch, rows, e)), jnp.float32)
    results["attention_value_gradient"] = {}
    print(f"\nattention dV = P^T dO: batch {batch}, {rows} query rows, {s} keys, head dim {e}")
    for form, fn, a in [("weights [rows, keys] (autodiff)", lambda p, d: jnp.einsum("bms,bme->bse", p, d), p_mxs),
                        ("weights [keys, rows] (attend)", lambda p, d: jnp.einsum("bsm,bme->bse", p, d), p_sxm)]:
        jf = jax.jit(fn)
        t = timed(jf, (a, do))
        lib = library(jf.lower(a, do).compile().as_text())
        results["attention_value_gradient"][form] = {"ms": 1000 * t, "gflops": flops / t / 1e9, "library": lib}
        print(f"  {form:34s} {1000 * t:7.2f} ms {flops / t / 1e9:7.1f} GFLOP/s  ({lib})")
    write_json_atomic(args.out, results)  # makes the folder too
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
