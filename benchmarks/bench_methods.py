"""What the mixture methods cost: (a) the wall-time overhead of each online method's run beyond
the training steps it takes, split into the method's own work and the trainer's, (b) the runs and
tokens each method trains besides the final run.

(a) In one process, on three generated domains and the `tiny` model at the trainer's default batch
(16 x 256 tokens): each round runs the same `--steps` steps once plainly at stratified weights and
once per configuration (a callback that does nothing, then each online method setting the weights),
in turn, after an untimed short warm-up of each that compiles every step, evaluation and alignment.
A configuration's overhead is the median over rounds of its time / the same round's plain time - 1.
The default 250 steps are one Aioli round (13 evaluations, one update). Each method's callback is
timed: its hooks hold the work the method asks for (evaluations, the reference model's forward pass,
gradient alignment, and its own bookkeeping; every hook waits for its results), split into the
one-off start (Skill-It's evaluation of the initial model) and the rest; the trainer's overhead is
what remains. Besides the released settings, two cheaper ones show how the method's work scales:
Aioli evaluating 1 validation batch per domain, DoReMi updating every 5 steps (each update 5x the
step size, `DoReMi(update_every=5)`). DoReMi's reference model is a short run (only its values would
differ); Skill-It's single-domain losses are stand-ins (likewise).

(b) For 3 domains at `--budget` tokens: offline methods' proposed runs, online methods'
prerequisite and proxy runs (`mixjax.runners.mix.plan_runs`).

    python benchmarks/bench_methods.py [--steps 250] [--rounds 2] [--batch 16] [--seq 256] [--budget 5e6]

Writes benchmarks/results/bench_methods.json and prints both tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixjax.io import write_json_atomic  # noqa: E402

DOMAINS = ("words", "numbers", "code")
# name -> (method, its options, validation batches per domain per evaluation, what it changes)
CONFIGURATIONS = {
    "aioli": ("aioli", {}, None, "released 3-domain settings"),
    "aioli_1batch": ("aioli", {}, 1, "1 validation batch per domain per evaluation"),
    "doremi": ("doremi", {}, None, "an update every step"),
    "doremi_every5": ("doremi", {"update_every": 5}, None, "an update every 5 steps"),
    "doge": ("doge", {}, None, "an update every 100 steps"),
    "skillit": ("skillit", {}, None, "an update every 500 steps"),
}


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


def new_method(name: str, options: dict, reference_dir: Path):
    from mixjax.methods import get

    method = get(name, len(DOMAINS), **options)
    if name == "doremi":
        method.reference_dir = reference_dir
    if name == "skillit":  # stand-in single-domain losses: the overhead does not depend on them
        method.loss_after = np.full((3, 3), 3.0) - 0.5 * np.eye(3)
    return method


class Timed:
    """A callback's hooks, timed: `start_s` (on_train_start) and `hooks_s` (every other hook)."""

    def __init__(self, inner):
        self.inner, self.start_s, self.hooks_s = inner, 0.0, 0.0

    def _timed(self, hook, ctx, *args, start=False):
        import jax

        jax.block_until_ready(ctx.params)  # the step's own tail (its outputs finish at different times)
        t = time.perf_counter()
        out = getattr(self.inner, hook)(ctx, *args)
        dt = time.perf_counter() - t
        if start:
            self.start_s += dt
        else:
            self.hooks_s += dt
        return out

    def on_train_start(self, ctx):
        self._timed("on_train_start", ctx, start=True)

    def on_step(self, ctx, info):
        self._timed("on_step", ctx, info)

    def on_eval(self, ctx, step, val):
        self._timed("on_eval", ctx, step, val)

    def on_train_end(self, ctx, result):
        return self._timed("on_train_end", ctx, result)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def callback_for(name: str, reference_dir: Path, default_eval_batches: int, warmup: bool = False):
    method_name, options, eval_batches, _ = CONFIGURATIONS[name]
    if warmup and method_name in ("doremi", "doge"):  # a short run that still compiles their update
        options = {**options, "update_every": 2}
    method = new_method(method_name, options, reference_dir)
    eval_batches = eval_batches or default_eval_batches
    return method.make_callback(eval_batches)


def overhead(args, data, config, workdir: Path) -> dict:
    from mixjax.train import Callback, run_training

    uniform = {d: 1 / len(DOMAINS) for d in DOMAINS}
    batch_tokens = config.batch_size * config.seq_len
    reference = workdir / "reference"
    run_training(dataclasses.replace(config, checkpoint_every=10**12), data, uniform, 20 * batch_tokens,
                 out_dir=reference)

    def timed(name, steps, warmup=False):
        if name == "plain":
            callback = None
        elif name == "noop_callback":
            callback = Timed(Callback())
        else:
            callback = Timed(callback_for(name, reference, args.eval_batches, warmup))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        run_training(config, data, uniform, steps * batch_tokens, callbacks=[callback] if callback else [])
        total = time.perf_counter() - t
        faults_per_step[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps)
        return total, (callback.start_s if callback else 0.0), (callback.hooks_s if callback else 0.0)

    names = ["plain", "noop_callback", *args.configurations]
    faults_per_step = {name: [] for name in names}  # minor page faults (host memory growing)
    for name in names:  # warm-up: compile every step, evaluation and alignment once
        print(f"  warm-up {name}: {timed(name, args.warmup_steps, warmup=True)[0]:.2f} s", flush=True)
    runs = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            runs[name].append(timed(name, args.steps))
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1][0]:.1f}s" for k, v in runs.items()), flush=True)
    plain = [t for t, _, _ in runs["plain"]]
    out = {"plain": {"median_s": statistics.median(plain), "times_s": plain,
                     "minor_faults_per_step": faults_per_step["plain"][-args.rounds:]}}
    for name in names[1:]:
        total = [t for t, _, _ in runs[name]]
        start = [s for _, s, _ in runs[name]]
        hooks = [h for _, _, h in runs[name]]
        ratio = [t / p - 1 for t, p in zip(total, plain)]
        method = [(s + h) / p for s, h, p in zip(start, hooks, plain)]
        out[name] = {
            "overhead": statistics.median(ratio),
            "method_share": statistics.median(method),          # the callback's hooks / plain
            "method_start_share": statistics.median([s / p for s, p in zip(start, plain)]),
            "trainer_share": statistics.median([o - m for o, m in zip(ratio, method)]),
            "median_s": statistics.median(total), "times_s": total, "plain_times_s": plain,
            "callback_start_s": start, "callback_hooks_s": hooks,
            "minor_faults_per_step": faults_per_step[name][-args.rounds:],
            "setting": CONFIGURATIONS[name][3] if name in CONFIGURATIONS else "a callback that does nothing",
        }
    return out


def spend(budget: int) -> dict:
    from mixjax.methods import get, is_online, names
    from mixjax.runners.mix import plan_runs

    rows = {}
    for name in names():
        plan = plan_runs(get(name, len(DOMAINS)), list(DOMAINS), budget)
        runs, tokens = plan.spend()
        proxy = plan.proxy_tokens is not None
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
    ap.add_argument("--steps", type=int, default=250, help="steps of each timed run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup-steps", type=int, default=12, help="steps of each untimed warm-up run")
    ap.add_argument("--eval-batches", type=int, default=4,
                    help="validation batches per domain per online evaluation (the trainer's default for methods)")
    ap.add_argument("--configurations", default=",".join(CONFIGURATIONS),
                    help=f"comma-separated, from {', '.join(CONFIGURATIONS)}")
    ap.add_argument("--budget", type=float, default=5e6, help="target budget for the spend table")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_methods.json"))
    args = ap.parse_args(argv)
    args.configurations = [c.strip() for c in args.configurations.split(",") if c.strip()]
    unknown = [c for c in args.configurations if c not in CONFIGURATIONS]
    if unknown:
        ap.error(f"--configurations: unknown {', '.join(unknown)}")

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
    print(f"\n(a) wall-time overhead of the online run, {args.steps} steps of {args.batch} x {args.seq} "
          f"tokens, tiny model, {args.rounds} rounds (load average before: {load_average()})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        specs = [parse_domain_flag(flag) for flag in write_domains(tmp, n=4000)]
        prepare(specs, tmp / "data", PrepareOptions(), progress=False)
        data = PreparedData(tmp / "data")
        started = time.perf_counter()
        timing = overhead(args, data, config, tmp)
        seconds = time.perf_counter() - started
    plain = timing["plain"]["median_s"]
    print(f"\n  plain run: median {plain:.2f} s ({1000 * plain / args.steps:.1f} ms per step incl. final eval)")
    print(f"  page faults per step, plain: {statistics.median(timing['plain']['minor_faults_per_step']):,.0f}")
    print(f"  {'configuration':15s} {'median s':>9s} {'overhead':>9s} {'method':>8s} {'(start)':>8s} {'trainer':>8s} "
          f"{'faults/step':>11s}  setting")
    for name, row in timing.items():
        if name != "plain":
            print(f"  {name:15s} {row['median_s']:9.2f} {100 * row['overhead']:8.1f}% {100 * row['method_share']:7.1f}% "
                  f"{100 * row['method_start_share']:7.1f}% {100 * row['trainer_share']:7.1f}% "
                  f"{statistics.median(row['minor_faults_per_step']):11,.0f}  {row['setting']}")
    results = {
        "command": "python benchmarks/bench_methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"steps": args.steps, "rounds": args.rounds, "batch": args.batch, "seq": args.seq,
                     "eval_batches": args.eval_batches, "model": "tiny", "domains": list(DOMAINS),
                     "warmup_steps": args.warmup_steps},
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
