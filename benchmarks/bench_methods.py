"""What the mixture methods cost: (a) the wall-time overhead of each online method's run beyond
the training steps it takes, (b) the runs and tokens each method trains besides the final run.

(a) In one process, on three small generated domains and the `tiny` model: a plain run of N steps
at stratified weights (B) against the same N steps with the online method setting the weights (A),
alternated B A B A ... for `--rounds` rounds after one untimed warm-up of each, so the compiled
steps are reused and load from other processes hits both alike; the overhead is median(A) /
median(B) - 1. The methods run at their default settings (aioli: the released 3-domain ones);
DoReMi's reference model is trained once beforehand (its cost is in (b), not here) and Skill-It's
single-domain losses are stand-ins (only their values would differ). A plain run with a callback
that does nothing is timed too: any callback turns off the trainer's prefetch of the next batch.

(b) For 3 domains at `--budget` tokens: offline methods' proposed runs, online methods'
prerequisite and proxy runs (`mixjax.methods.mix.planned_spend`).

    python benchmarks/bench_methods.py [--steps 300] [--rounds 3] [--batch 8] [--seq 32] [--budget 5e6]

Writes benchmarks/results/bench_methods.json and prints both tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixjax.io import write_json_atomic  # noqa: E402

DOMAINS = ("words", "numbers", "code")
ONLINE = ("aioli", "doremi", "doge", "skillit")


def write_domains(root: Path, n: int = 1500, seed: int = 0) -> list[str]:
    """Three chat domains with different statistics (enough tokens for a few thousand small steps)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def text(kind: str) -> str:
        if kind == "words":
            return " ".join("".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(rng.integers(4, 12)))
        if kind == "numbers":
            a, b = rng.integers(0, 1000, 2)
            return f"{a} + {b} = {a + b}; {a} * {b} = {a * b}"
        name = "".join(rng.choice(letters, 5))
        return f"def {name}(x):\n    return x * {rng.integers(2, 9)} + {rng.integers(0, 99)}\n"

    flags = []
    for kind in DOMAINS:
        path = root / f"{kind}.jsonl"
        path.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": text(kind)[:20]},
            {"role": "assistant", "content": text(kind)}]}) + "\n" for _ in range(n)))
        flags.append(f"{kind}={path}")
    return flags


def new_method(name: str, reference_dir: Path):
    from mixjax.methods import get

    method = get(name, len(DOMAINS))
    if name == "doremi":
        method.reference_dir = reference_dir
    if name == "skillit":  # stand-in single-domain losses: the overhead does not depend on them
        method.loss_after = np.full((3, 3), 3.0) - 0.5 * np.eye(3)
    return method


def callback_for(method, eval_batches: int):
    from mixjax.methods.online_callback import OnlineMethodCallback

    make = getattr(method, "make_callback", None)
    return make(eval_batches) if make else OnlineMethodCallback(method, eval_max_batches=eval_batches)


def overhead(args, data, config, budget, workdir: Path) -> dict:
    from mixjax.train import Callback, run_training

    uniform = {d: 1 / len(DOMAINS) for d in DOMAINS}
    reference = workdir / "reference"
    run_training(dataclasses.replace(config, checkpoint_every=10**12), data, uniform, budget, out_dir=reference)

    def timed(callbacks=()):
        t = time.perf_counter()
        run_training(config, data, uniform, budget, callbacks=list(callbacks))
        return time.perf_counter() - t

    runs = {"plain": lambda: timed(),
            "noop_callback": lambda: timed([Callback()])}
    for name in ONLINE:
        runs[name] = lambda name=name: timed([callback_for(new_method(name, reference), args.eval_batches)])
    for name, run in runs.items():  # warm-up: compile every step, eval, alignment and restore once
        print(f"  warm-up {name}: {run():.2f} s", flush=True)
    times = {name: [] for name in runs}
    paired_plain = {name: [] for name in runs if name != "plain"}
    for r in range(args.rounds):
        for name in paired_plain:
            plain = runs["plain"]()
            times["plain"].append(plain)
            paired_plain[name].append(plain)
            times[name].append(runs[name]())
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    out = {}
    for name in paired_plain:
        a, b = statistics.median(times[name]), statistics.median(paired_plain[name])
        out[name] = {"median_s": a, "median_plain_s": b, "overhead": a / b - 1,
                     "times_s": times[name], "plain_times_s": paired_plain[name]}
    out["plain"] = {"median_s": statistics.median(times["plain"]), "times_s": times["plain"]}
    return out


def spend(budget: int) -> dict:
    from mixjax.methods import get, is_online, names
    from mixjax.methods.mix import planned_spend

    rows = {}
    for name in names():
        method = get(name, len(DOMAINS))
        runs, tokens = planned_spend(method, list(DOMAINS), budget)
        proxy = bool(getattr(method, "proxy_fraction", None))
        rows[name] = {"kind": "online" if is_online(name) else "offline", "extra_runs": runs, "extra_tokens": tokens,
                      "extra_tokens_per_budget": tokens / budget,
                      "final_run": "separate" if proxy or not is_online(name) else "the online run"}
    return rows


def load_average():
    try:
        return os.getloadavg()
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="steps of each timed run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--eval-batches", type=int, default=4, help="validation batches per domain per online evaluation")
    ap.add_argument("--budget", type=float, default=5e6, help="target budget for the spend table")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_methods.json"))
    args = ap.parse_args(argv)

    from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
    from mixjax.data.prepared import PreparedData
    from mixjax.train import TrainConfig

    budget_tokens = int(args.budget)
    cost = spend(budget_tokens)
    print(f"(b) runs and tokens besides the final run, 3 domains, budget {budget_tokens:,} tokens")
    print(f"  {'method':10s} {'kind':8s} {'runs':>5s} {'tokens':>13s} {'x budget':>9s}  final run")
    for name, row in cost.items():
        print(f"  {name:10s} {row['kind']:8s} {row['extra_runs']:5d} {row['extra_tokens']:13,d} "
              f"{row['extra_tokens_per_budget']:9.2f}  {row['final_run']}")

    config = TrainConfig(model="tiny", batch_size=args.batch, seq_len=args.seq, progress=False,
                         eval_max_batches=args.eval_batches)
    run_tokens = args.steps * args.batch * args.seq
    print(f"\n(a) wall-time overhead of the online run, {args.steps} steps of {args.batch} x {args.seq} "
          f"tokens, tiny model, {args.rounds} rounds (load average before: {load_average()})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        specs = [parse_domain_flag(flag) for flag in write_domains(tmp)]
        prepare(specs, tmp / "data", PrepareOptions(), progress=False)
        data = PreparedData(tmp / "data")
        started = time.perf_counter()
        timing = overhead(args, data, config, run_tokens, tmp)
        seconds = time.perf_counter() - started
    plain = timing["plain"]["median_s"]
    print(f"\n  plain run: median {plain:.2f} s ({1000 * plain / args.steps:.1f} ms per step incl. final eval)")
    print(f"  {'method':14s} {'median s':>9s} {'paired plain s':>15s} {'overhead':>9s}")
    for name, row in timing.items():
        if name != "plain":
            print(f"  {name:14s} {row['median_s']:9.2f} {row['median_plain_s']:15.2f} {100 * row['overhead']:8.1f}%")
    results = {
        "command": "python benchmarks/bench_methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"steps": args.steps, "rounds": args.rounds, "batch": args.batch, "seq": args.seq,
                     "eval_batches": args.eval_batches, "model": "tiny", "domains": list(DOMAINS)},
        "overhead": timing, "spend": {"budget_tokens": budget_tokens, "domains": 3, "methods": cost},
        "seconds": seconds, "load_average_after": load_average(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    write_json_atomic(out, results)
    print(f"\nwrote {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
