"""Training throughput of the mixjax trainer vs HF transformers + PyTorch (eager, torch.compile).

Same model (Llama shape of the preset, byte vocabulary), batch 16 x seq 256, float32, AdamW, random
tokens. Implementations are timed in alternation (A B C A B C ...) and the medians compared, so
load from other processes hits all of them alike. Also a plain JAX float32 matmul peak, and
model-FLOPs utilisation = 6N(+attention) FLOPs per token x tokens/s / peak.

    python benchmarks/bench_train.py [--presets tiny,small] [--rounds 5] [--steps 5] [--warmup 10]
                                     [--no-compile]

Writes benchmarks/results/train.json and prints a table. Importing mixjax keeps freed host memory
for reuse (mixjax/host_memory.py), for PyTorch in this process too; run with
MIXJAX_MALLOC_TUNING=0 (and another --out) for both with glibc's default malloc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixjax import host_memory  # noqa: E402
from mixjax.io import write_json_atomic  # noqa: E402

B, L, VOCAB = 16, 256, 259


def matmul_peak(n=2048, reps=5) -> float:
    """Best float32 FLOP/s of a plain jitted n x n matmul (called between rounds too: the best
    over the whole run is used, so a busy moment at the start does not inflate the MFU)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def batch_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(0, VOCAB, (B, L)).astype(np.int32),
            "segment_ids": np.ones((B, L), np.int32),
            "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
            "loss_mask": np.ones((B, L), bool), "domain_ids": np.zeros((B, L), np.int32)}


class JaxRunner:
    def __init__(self, cfg, dtype="float32"):
        import jax
        from mixjax.train.mesh import make_mesh
        from mixjax.train.step import StepConfig, Stepper

        self.jax = jax
        self.st = Stepper(StepConfig(cfg, B, L, 1, compute_dtype=dtype, weight_decay=0.0),
                          make_mesh(None, jax.devices()[:1]))
        self.state = self.st.init_state(self.st.init_params(0))
        self.batch = self.st.put_batch(batch_arrays())
        t = time.perf_counter()
        self.step(1)
        self.compile_s = time.perf_counter() - t

    def step(self, n):
        for _ in range(n):
            self.state, m = self.st.train_step(self.state, self.batch, np.float32(1e-3), self.st.no_loss_weights())
        return float(self.jax.device_get(m["loss"]))


class TorchRunner:
    def __init__(self, cfg, compile_: bool):
        import torch
        import transformers
        from mixjax.model.hf import config_to_hf

        self.torch = torch
        torch.manual_seed(0)
        hf = config_to_hf(cfg)
        hf.pop("architectures"), hf.pop("model_type")
        hcfg = transformers.LlamaConfig(**hf)
        hcfg._attn_implementation = "sdpa"
        self.model = transformers.LlamaForCausalLM(hcfg).float().train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
        a = batch_arrays()
        self.x = torch.tensor(a["tokens"], dtype=torch.long)

        def train_step(x):
            out = self.model(input_ids=x, labels=x)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            return out.loss.detach()

        self.fn = torch.compile(train_step) if compile_ else train_step
        t = time.perf_counter()
        self.step(2)
        self.compile_s = time.perf_counter() - t

    def step(self, n):
        for _ in range(n):
            loss = self.fn(self.x)
        return float(loss)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed block")
    ap.add_argument("--warmup", type=int, default=10,
                    help="untimed steps of each implementation before the rounds (mixjax's first "
                         "rounds ran 20-40%% slower than its steady state without them)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also time mixjax with bfloat16 compute")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    ap.add_argument("--replace", action="store_true", help="drop presets not measured in this run from --out")
    args = ap.parse_args(argv)

    from mixjax.model import get_config

    peak = matmul_peak()
    print(f"JAX float32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"malloc kept freed memory for reuse (mixjax/host_memory.py): {host_memory.applied()}")
    results = {"batch": [B, L], "vocab": VOCAB, "matmul_peak_gflops": peak / 1e9, "presets": {},
               "malloc_tuned": host_memory.applied(),
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "processor": platform.processor()},
               "command": "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name in args.presets.split(","):
        cfg = get_config(name, VOCAB)
        flops_tok = cfg.flops_per_token(L)
        runners = {"mixjax": JaxRunner(cfg)}
        if args.bf16:
            runners["mixjax_bf16"] = JaxRunner(cfg, "bfloat16")
        if not args.no_torch:
            runners["torch_eager"] = TorchRunner(cfg, False)
            if not args.no_compile:
                runners["torch_compile"] = TorchRunner(cfg, True)
        for r in runners.values():
            r.step(args.warmup)
        times = {k: [] for k in runners}
        for _ in range(args.rounds):
            for k, r in runners.items():
                t = time.perf_counter()
                r.step(args.steps)
                times[k].append(B * L * args.steps / (time.perf_counter() - t))
            peak = max(peak, matmul_peak(reps=2))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"params": cfg.num_params(), "flops_per_token": flops_tok,
               "tokens_per_s": med, "all_tokens_per_s": times,
               "gflops": {k: v * flops_tok / 1e9 for k, v in med.items()},
               "mfu_of_matmul_peak": {k: v * flops_tok / peak for k, v in med.items()},
               "compile_s": {k: r.compile_s for k, r in runners.items()}}
        for ref in ("torch_eager", "torch_compile"):
            if ref in med:
                row[f"ratio_vs_{ref}"] = med["mixjax"] / med[ref]
        row["load_average_1min"] = load_average()
        row["malloc_tuned"] = host_memory.applied()
        row["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        row["matmul_peak_gflops_so_far"] = peak / 1e9
        results["presets"][name] = row
        print(f"\n{name}: {cfg.num_params() / 1e6:.2f}M params, {flops_tok / 1e6:.2f} MFLOP/token")
        for k in runners:
            print(f"  {k:14s} {med[k]:10,.0f} tok/s  {row['gflops'][k]:7.1f} GFLOP/s  "
                  f"{100 * row['mfu_of_matmul_peak'][k]:5.1f}% of matmul peak  (first step {row['compile_s'][k]:.1f}s)")
        for ref in ("torch_eager", "torch_compile"):
            if ref in med:
                print(f"  mixjax / {ref}: {row[f'ratio_vs_{ref}']:.2f}x")
        del runners
    results["matmul_peak_gflops"] = peak / 1e9
    print(f"\nbest JAX float32 matmul over the run: {peak / 1e9:.1f} GFLOP/s "
          f"(MFU figures above use the best seen by the end of each preset)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not args.replace:  # keep the other presets' last measurements
        try:
            old = json.loads(out.read_text())
            results["presets"] = {**old.get("presets", {}), **results["presets"]}
        except (json.JSONDecodeError, OSError):
            pass
    write_json_atomic(out, results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
