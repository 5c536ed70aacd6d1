"""Train-step tokens/s of two source trees of mixjax, alternated in separate processes (A B A B).

For a change whose effect is a few percent: on a shared 2-core machine the speed drifts by more
than that within minutes, so a single before/after pair says little. Each run is its own process
(no shared heap or compilation cache), takes untimed warm-up steps, then times blocks of steps;
the per-pair ratios B/A and their median are printed.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_step_ab.py /tmp/before . [--presets tiny,small] [--pairs 4]

Or one tree against itself with other model settings (ModelConfig fields):

    python benchmarks/bench_step_ab.py . . --b-overrides attention=blockwise

Batch 16 x 256, float32, AdamW, random tokens (as bench_train.py). Writes
benchmarks/results/step_ab.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixjax.io import write_json_atomic  # noqa: E402

CHILD = r"""
import sys, time, statistics, json
root, preset, warmup, blocks, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
overrides = json.loads(sys.argv[6])
sys.path.insert(0, root + "/benchmarks"); sys.path.insert(0, root)
import mixjax
assert mixjax.__file__.startswith(root), f"imported {mixjax.__file__}, not from {root}"
from bench_train import B, L, VOCAB, JaxRunner
from mixjax.model import get_config
runner = JaxRunner(get_config(preset, VOCAB, **overrides))  # that tree's own benchmark step
runner.step(warmup)
rates = []
for _ in range(blocks):
    t = time.perf_counter()
    loss = runner.step(steps)
    rates.append(B * L * steps / (time.perf_counter() - t))
print("TOKENS_PER_S", statistics.median(rates), "LOSS", loss)
"""


def parse_overrides(text: str) -> dict:
    """"attention=blockwise,scan_layers=false" -> {"attention": "blockwise", "scan_layers": False}."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value in ("true", "false") or value.lstrip("-").isdigit() else value
    return out


def run_once(root: Path, preset: str, warmup: int, blocks: int, steps: int, overrides: dict) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), preset, str(warmup), str(blocks), str(steps),
                          json.dumps(overrides)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("TOKENS_PER_S"):
            _, rate, _, loss = line.split()
            return float(rate), float(loss)
    raise SystemExit(f"run in {root} failed:\n{out.stderr[-3000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree_a", type=Path, help="source tree A (e.g. a worktree of the old commit)")
    ap.add_argument("tree_b", type=Path, help="source tree B (e.g. .)")
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=12)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed block")
    ap.add_argument("--a-overrides", default="", metavar="FIELD=VALUE,...", help="ModelConfig fields for A")
    ap.add_argument("--b-overrides", default="", metavar="FIELD=VALUE,...", help="ModelConfig fields for B")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_ab.json"))
    args = ap.parse_args(argv)
    trees = {"a": args.tree_a.resolve(), "b": args.tree_b.resolve()}
    overrides = {"a": parse_overrides(args.a_overrides), "b": parse_overrides(args.b_overrides)}
    for t in trees.values():
        if not (t / "mixjax" / "model" / "decoder.py").is_file():
            raise SystemExit(f"{t}: not a mixjax source tree (no mixjax/model/decoder.py)")
    results = {"trees": {k: str(v) for k, v in trees.items()}, "overrides": overrides, "presets": {},
               "command": "python benchmarks/bench_step_ab.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for preset in args.presets.split(","):
        runs = {"a": [], "b": []}
        losses = {}
        for i in range(args.pairs):
            for k in ("a", "b"):
                rate, losses[k] = run_once(trees[k], preset, args.warmup, args.blocks, args.steps, overrides[k])
                runs[k].append(rate)
            print(f"{preset} pair {i + 1}: A {runs['a'][-1]:9,.0f}  B {runs['b'][-1]:9,.0f} tok/s  "
                  f"B/A {runs['b'][-1] / runs['a'][-1]:.3f}", flush=True)
        ratios = [b / a for a, b in zip(runs["a"], runs["b"])]
        results["presets"][preset] = {"tokens_per_s": runs, "ratios_b_over_a": ratios,
                                      "median_ratio": statistics.median(ratios), "final_loss": losses,
                                      "load_average_1min": os.getloadavg()[0],
                                      "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print(f"{preset}: median B/A {statistics.median(ratios):.3f} over {args.pairs} pairs; "
              f"final loss A {losses['a']:.5f}, B {losses['b']:.5f}")
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
