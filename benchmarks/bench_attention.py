"""What attention costs in a train step: mixjax vs HF transformers + PyTorch eager, by ablation.

Each implementation is timed with its attention core as usual and with the core replaced by an
elementwise stand-in (the projections, norms, MLP and loss unchanged); the difference is the time
attention takes. Every configuration runs in its own process (JAX executables and PyTorch share
one heap otherwise), in alternation A B C D A B C D ..., and medians are compared.

    python benchmarks/bench_attention.py [--presets tiny,small] [--rounds 3]

Writes benchmarks/results/attention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ("mixjax", "mixjax_no_attention", "torch_eager", "torch_eager_no_attention")


def child(preset: str, config: str, steps: int, blocks: int) -> None:
    """Train `blocks` x `steps` steps after a warm-up; print the median tokens/s as JSON."""
    sys.path.insert(0, str(Path(__file__).parent))
    import mixjax  # noqa: F401  (host memory tuning before JAX or torch start)

    if config == "mixjax_no_attention":
        import jax.numpy as jnp
        from mixjax.model import decoder

        def no_attention(self, x, cos, sin, mask):
            dt = x.dtype
            b, l, d = x.shape
            q = decoder.project(x, self.q_DxHxE[...].astype(dt)).reshape(b, l, -1)
            kv = (decoder.project(x, self.k_DxKxE[...].astype(dt))
                  + decoder.project(x, self.v_DxKxE[...].astype(dt))).reshape(b, l, -1)
            o = q * jnp.tile(kv, (1, 1, q.shape[-1] // kv.shape[-1]))
            return decoder.project(o, self.o_HxExD[...].astype(dt).reshape(-1, d))

        decoder.Attention.__call__ = no_attention
    if config == "torch_eager_no_attention":
        import torch

        def no_sdpa(q, k, v, *args, **kwargs):
            return q * (1 + 0 * (k.sum() + v.sum()))

        torch.nn.functional.scaled_dot_product_attention = no_sdpa
    from bench_train import B, L, VOCAB, JaxRunner, TorchRunner
    from mixjax.model import get_config

    cfg = get_config(preset, VOCAB)
    runner = JaxRunner(cfg) if config.startswith("mixjax") else TorchRunner(cfg, False)
    runner.step(10)
    rates = []
    for _ in range(blocks):
        t = time.perf_counter()
        runner.step(steps)
        rates.append(B * L * steps / (time.perf_counter() - t))
    print(json.dumps({"tokens_per_s": statistics.median(rates)}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention.json"))
    ap.add_argument("--child", nargs=2, metavar=("PRESET", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        preset = args.child[0]
        child(preset, args.child[1], steps=3 if preset == "tiny" else 1, blocks=7)
        return

    from bench_train import B, L
    from mixjax.io import write_json_atomic

    results = {"batch": [B, L], "cpu_count": os.cpu_count(), "presets": {},
               "command": "python benchmarks/bench_attention.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for preset in args.presets.split(","):
        rates = {c: [] for c in CONFIGS}
        for _ in range(args.rounds):
            for config in CONFIGS:
                out = subprocess.run([sys.executable, __file__, "--child", preset, config], check=True,
                                     capture_output=True, text=True).stdout
                rates[config].append(json.loads(out.strip().splitlines()[-1])["tokens_per_s"])
        med = {c: statistics.median(v) for c, v in rates.items()}
        step_ms = {c: 1000 * B * L / r for c, r in med.items()}
        attention_ms = {"mixjax": step_ms["mixjax"] - step_ms["mixjax_no_attention"],
                        "torch_eager": step_ms["torch_eager"] - step_ms["torch_eager_no_attention"]}
        rest_ms = {"mixjax": step_ms["mixjax_no_attention"], "torch_eager": step_ms["torch_eager_no_attention"]}
        results["presets"][preset] = {"tokens_per_s": med, "all_tokens_per_s": rates, "step_ms": step_ms,
                                      "attention_ms": attention_ms, "rest_of_step_ms": rest_ms}
        print(f"\n{preset}: ms per step (batch {B} x {L})")
        for impl in ("mixjax", "torch_eager"):
            print(f"  {impl:12s} step {step_ms[impl]:7.1f}   attention {attention_ms[impl]:7.1f}   "
                  f"everything else {rest_ms[impl]:7.1f}")
    write_json_atomic(args.out, results)  # makes the folder too
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
