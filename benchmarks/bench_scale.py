"""The trainer at the papers' scale, without a GPU: `mixjax.plan` compiles the real train step for
fake CPU devices on abstract inputs and reads XLA's memory analysis (an estimate of a GPU's, see
mixjax/plan.py), for the shapes the README quotes:

- per-device memory of llama-3.1-8b and llama-3.2-3b on 8 devices (fsdp 8, 1 x 4096 each) and of
  qwen2.5-0.5b on one device (4 x 4096), bf16, loss chunk 512, by remat policy;
- attention memory against sequence length (the 8b's temporaries at 8192 over 4096);
- compile time against depth: a 4-layer and a 32-layer model of the 8b's width, scanned and
  unrolled (full compiles, as `mixjax train` does them).

    python benchmarks/bench_scale.py [--quick]

One compile at a time (each takes seconds to a minute on 2 cores and under 1 GB of memory).
Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)

from mixjax.io import write_json_atomic  # noqa: E402
from mixjax.model import get_config  # noqa: E402
from mixjax.plan import plan_step  # noqa: E402

GIB = 2**30
COMMON = dict(compute_dtype="bfloat16", loss_chunk=512)
FSDP8 = dict(devices=8, mesh_shape=(1, 8, 1), batch_size=8, seq_len=4096)
ONE = dict(devices=1, mesh_shape=(1, 1, 1), batch_size=4, seq_len=4096)


def plan(preset, shape, fast=True, **model_kw):
    cfg = get_config(preset, **model_kw)
    p = plan_step(cfg, **shape, **COMMON, model_name=preset, fast_compile=fast)
    b = p["bytes_per_device"]
    row = {"model": preset, **{k: v for k, v in model_kw.items()}, "devices": p["devices"], "mesh": p["mesh"],
           "batch_size": p["batch_size"], "seq_len": p["seq_len"], "attention_compiled": p["attention_compiled"],
           "arguments_gib": b["arguments"] / GIB, "temporaries_gib": b["temporaries"] / GIB,
           "total_gib": b["total"] / GIB, "compile_s": p["compile_s"], "fast_compile": fast,
           "load_average_1min": os.getloadavg()[0]}
    print(f"{preset:14s} {str(model_kw):60s} dev {p['devices']} batch {p['batch_size']:2d}x{p['seq_len']:5d}: "
          f"args {row['arguments_gib']:6.2f}  temp {row['temporaries_gib']:7.2f}  total {row['total_gib']:7.2f} GiB"
          f"  compile {p['compile_s']:6.1f} s", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the targets (no remat/attention ablations)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    out = {"command": "python benchmarks/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "note": "XLA CPU memory_analysis() per device on fake CPU devices: an estimate of a GPU's, not a "
                   "measurement; GPU kernels (auto/cudnn/pallas) compile as 'blockwise'",
           "memory": [], "sequence": [], "depth": []}
    remats = ["full"] if args.quick else ["full", "dots", "none"]
    for remat in remats:
        out["memory"].append(plan("llama-3.1-8b", FSDP8, remat=remat))
    out["memory"].append(plan("llama-3.2-3b", FSDP8, remat="full"))
    for remat in remats:
        out["memory"].append(plan("qwen2.5-0.5b", ONE, remat=remat))
    if not args.quick:  # what the textbook attention costs (its backward keeps [B, H, L, L] scores)
        out["memory"].append(plan("llama-3.1-8b", FSDP8, remat="full", attention="plain"))
    for seq in (4096, 8192):
        out["sequence"].append(plan("llama-3.1-8b", {**FSDP8, "seq_len": seq}, remat="full"))
    s4, s8 = (r["temporaries_gib"] for r in out["sequence"])
    out["temporaries_ratio_8192_over_4096"] = s8 / s4
    print(f"temporaries at 8192 / at 4096: {s8 / s4:.2f}")
    for scan in (True, False):
        for layers in (4, 32):
            out["depth"].append(plan("llama-3.1-8b", FSDP8, fast=False, remat="full", n_layers=layers,
                                     scan_layers=scan))
    d = {(r["n_layers"], r["scan_layers"]): r["compile_s"] for r in out["depth"]}
    out["compile_ratio_32_over_4_scanned"] = d[32, True] / d[4, True]
    out["compile_ratio_32_over_4_unrolled"] = d[32, False] / d[4, False]
    print(f"compile 32 / 4 layers: scanned {d[32, True] / d[4, True]:.2f}, unrolled {d[32, False] / d[4, False]:.2f}")
    out["wall_s"] = time.time() - t0
    write_json_atomic(args.out, out)
    print(f"wrote {args.out} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
