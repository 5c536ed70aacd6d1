"""Shared memory, registers and spills of the GQA flash-attention Triton kernels
(`mixjax.kernels.flash_gqa_gpu`), compiled for an H100 (sm_90a) on a machine without a GPU.

    pip install triton        # Triton's compiler and its ptxas; not a mixjax dependency
    python benchmarks/kernel_resources.py [--dtype bfloat16|float32] [--blocks FQ,FK,DKVQ,DKVK,DQQ,DQK]
        [--out PATH]

For each model shape below, forward + backward of `flash_attention` (bfloat16 by default) are
lowered for CUDA with `jax.export` (as tests/test_lowering.py does); each kernel's Triton IR is
taken from the module, compiled by pip Triton for sm_90a with the kernel's num_warps and
num_stages, and its PTX assembled by Triton's ptxas with -v: shared memory (Triton's allocation),
registers a thread and spill bytes. Without --blocks the tiles are `BlockSizes.for_head_dim`'s.
A proxy: XLA compiles the same IR with the Triton it bundles, whose passes may differ from pip
Triton's; speed is not measured. Results: benchmarks/results/kernel_resources.json (atomically), and a table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from mixjax.io import write_json_atomic
from mixjax.kernels.flash_gqa_gpu import BlockSizes, flash_attention

SHAPES = {"qwen2.5-0.5b": (14, 2, 64), "llama-3.2-3b": (24, 8, 128)}  # query heads, kv heads, head dim
SEQ_LEN = 1024  # resources do not depend on it (only loop trip counts do)
TRITON = "__gpu$xla.gpu.triton"


def kernel_irs(heads: int, kv_heads: int, head_dim: int, dtype, blocks: BlockSizes | None):
    """[(kernel name, num_warps, num_stages, textual Triton IR)] of forward + backward."""
    from jax._src.lib.mlir import ir
    from jax._src.pallas.triton import lowering

    s = jax.ShapeDtypeStruct
    q, kv = s((1, SEQ_LEN, heads, head_dim), dtype), s((1, SEQ_LEN, kv_heads, head_dim), dtype)

    def step(q, k, v, seg, w):
        o, pullback = jax.vjp(lambda q, k, v: flash_attention(q, k, v, seg, scale=0.1, block_sizes=blocks), q, k, v)
        return o, pullback(w)

    exported = jax.export.export(jax.jit(step), platforms=["cuda"],
                                 disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON)])(
        q, kv, kv, s((1, SEQ_LEN), jnp.int32), q)
    out = []
    for line in exported.mlir_module().splitlines():
        if TRITON not in line:
            continue
        name = re.search(r'name = "(\w+)"', line).group(1)
        warps, stages = (int(re.search(rf"{k} = (\d+)", line).group(1)) for k in ("num_warps", "num_stages"))
        escaped = re.search(r'ir = "((?:[^"\\]|\\.)*)"', line).group(1)  # MLIR bytecode, \XX-escaped
        data = re.sub(rb"\\([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), escaped.encode("latin-1"))
        with lowering._new_ir_context():
            out.append((name, warps, stages, str(ir.Module.parse(data))))
    return out


def compile_sm90(ttir: str, warps: int, stages: int) -> dict:
    """Shared bytes (Triton), registers and spill bytes (ptxas -v) of one kernel for sm_90a."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ttir")
        src.write_text(ttir)
        kernel = triton.compile(str(src), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": warps, "num_stages": stages})
        ptx = Path(tmp, "kernel.ptx")
        ptx.write_text(kernel.asm["ptx"])
        done = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name=sm_90a", str(ptx), "-o", str(ptx) + ".o"],
                              capture_output=True, text=True)
    log = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f"ptxas failed: {log[-500:]}")
    number = lambda pattern: int(re.search(pattern, log).group(1))  # noqa: E731
    return {"shared_bytes": kernel.metadata.shared, "registers": number(r"Used (\d+) registers"),
            "spill_store_bytes": number(r"(\d+) bytes spill stores"),
            "spill_load_bytes": number(r"(\d+) bytes spill loads")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--blocks", help="six tiles: fwd_q,fwd_k,dkv_q,dkv_k,dq_q,dq_k (default: for_head_dim's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "kernel_resources.json"))
    args = parser.parse_args(argv)
    try:
        import triton
    except ImportError:
        print("kernel_resources: needs Triton's compiler: pip install triton", file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    blocks = BlockSizes(*map(int, args.blocks.split(","))) if args.blocks else None
    rows = []
    for model, (heads, kv_heads, head_dim) in SHAPES.items():
        tiles = blocks or BlockSizes.for_head_dim(head_dim, args.dtype)
        for name, warps, stages, ttir in kernel_irs(heads, kv_heads, head_dim, jnp.dtype(args.dtype), blocks):
            tile = {"flash_gqa_forward": (tiles.fwd_q, tiles.fwd_k), "flash_gqa_backward_dkv": (tiles.dkv_q, tiles.dkv_k),
                    "flash_gqa_backward_dq": (tiles.dq_q, tiles.dq_k)}[name]
            row = {"model": model, "head_dim": head_dim, "kernel": name, "tile_q_x_k": list(tile),
                   "num_warps": warps, "num_stages": stages, **compile_sm90(ttir, warps, stages)}
            rows.append(row)
            print(f"{model:13s} E={head_dim:3d} {name:23s} {tile[0]:3d} x {tile[1]:3d}  warps {warps}  "
                  f"shared {row['shared_bytes'] / 1024:6.1f} KiB  registers {row['registers']:3d}  "
                  f"spills {row['spill_store_bytes']} B", flush=True)
    write_json_atomic(args.out, {"jax": jax.__version__, "triton": triton.__version__, "target": "sm_90a",
                                 "seq_len": SEQ_LEN, "dtype": args.dtype, "kernels": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
