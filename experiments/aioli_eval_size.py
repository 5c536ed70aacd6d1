"""How many validation batches Aioli's evaluations need: the share of the run they cost against how
far their estimate of the update strays.

One Aioli run (released 3-domain settings: LearnParams of 4 x 3 x 6 steps every 250) on the bundled
domains, fine-tuning the cached base model. At every evaluation Aioli asks for, each domain's
validation loss is also taken on `--reference` (6) more batches, and shadow copies of Aioli are fed
the losses of the first 1, 2 and 4 batches (the run itself uses 4; its A must equal the 4-batch
shadow's) and of `--reference` other batches (an independent, larger estimate). For each update,
from the run's weights before it: the weights each estimate would step to, their L1 distance to
the reference estimate's, against the size of the step itself (L1), and the cosine between the
centred column sums of A (the EG direction). Each batch is 16 x 256 tokens; the cost column counts
the evaluations' forward passes per training step (`benchmarks/bench_methods.py` measures what they
cost in wall time).

    python experiments/aioli_eval_size.py            # ~10 min on 2 CPU cores (base model cached)
    python experiments/aioli_eval_size.py --quick    # seconds: checks the script end to end
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from mixjax.errors import MixjaxError  # noqa: E402
from mixjax.train import Callback  # noqa: E402

CANDIDATES = (1, 2, 4)


class EvalSizeProbe(Callback):
    """A trainer callback beside the Aioli callback: at each of its evaluations, the per-batch
    validation loss sums of every domain, fed to shadow Aiolis by batch subset."""

    def __init__(self, method, reference: int, strict: bool = True):
        from mixjax.methods.aioli import Aioli

        self.method, self.reference, self.strict = method, reference, strict
        self.sets = {f"{n} batch{'es' if n > 1 else ''}": list(range(n)) for n in CANDIDATES}
        self.sets["reference"] = list(range(max(CANDIDATES), max(CANDIDATES) + reference))
        self.shadows = {name: Aioli(dataclasses.replace(method.config)) for name in self.sets}
        self.device_batches = {}
        self.weights_before = []   # the run's weights before each update

    def _losses(self, ctx) -> dict:
        import jax

        needed = max(CANDIDATES) + self.reference
        sums = {}
        for d in ctx.domains:
            if d not in self.device_batches:
                arrays = ctx.validation_arrays(d, needed)
                if not self.strict:  # --quick: too few held-out batches, reused in turn
                    arrays = [arrays[i % len(arrays)] for i in range(needed)]
                if len(arrays) < needed:
                    raise MixjaxError(f"domain {d} has {len(arrays)} validation batches; the probe needs {needed} "
                                      "(lower --reference)")
                self.device_batches[d] = [ctx.stepper.put_batch(a) for a in arrays]
            sums[d] = [ctx.stepper.eval_step(ctx.params, b) for b in self.device_batches[d]]
        sums = jax.device_get(sums)
        out = {}
        for name, idx in self.sets.items():
            loss = []
            for i, d in enumerate(ctx.domains):
                s = sum(float(sums[d][j]["domain_loss_sum"][i]) for j in idx)
                c = sum(float(sums[d][j]["domain_count"][i]) for j in idx)
                loss.append(s / c if c else float("nan"))
            out[name] = np.array(loss)
        return out

    def _observe(self, ctx, step: int) -> None:
        schedule = self.shadows["reference"]  # the run's schedule (same settings); begun before the run's
        if not schedule.eval_due(step):
            return
        _, offset = schedule._round_offset(step)
        if offset == schedule.lp_length:
            self.weights_before.append(list(self.method.state["weights"]))
        for name, loss in self._losses(ctx).items():
            self.shadows[name].observe_eval(step, loss)

    def on_train_start(self, ctx) -> None:
        for shadow in self.shadows.values():
            shadow.begin(list(ctx.domains), int(ctx.num_steps))
        self._observe(ctx, 0)

    def on_step(self, ctx, info) -> None:
        self._observe(ctx, info.steps_done)


def compare(probe: EvalSizeProbe, run_a: list) -> list[dict]:
    """Per update: each candidate's step and direction against the reference estimate's."""
    from mixjax.methods.online_rules import aioli_update

    eta = probe.method.config.eta
    rows = []
    for u, before in enumerate(probe.weights_before):
        before = np.asarray(before)
        ref_a = np.asarray(probe.shadows["reference"].state["a"][u])
        ref_w = aioli_update(before, ref_a, eta)
        ref_dir = ref_a.sum(0) - ref_a.sum(0).mean()
        row = {"update": u + 1, "step_size_l1": float(np.abs(ref_w - before).sum()), "candidates": {},
               "weights_before": before.tolist(), "reference_a": ref_a.tolist(),
               "run_matches_4_batches": bool(np.allclose(run_a[u], probe.shadows["4 batches"].state["a"][u],
                                                         atol=1e-9))}
        for name in probe.sets:
            if name == "reference":
                continue
            a = np.asarray(probe.shadows[name].state["a"][u])
            w = aioli_update(before, a, eta)
            direction = a.sum(0) - a.sum(0).mean()
            cos = float(direction @ ref_dir / (np.linalg.norm(direction) * np.linalg.norm(ref_dir) + 1e-30))
            row["candidates"][name] = {"distance_l1": float(np.abs(w - ref_w).sum()), "cosine": cos,
                                       "a": a.tolist()}
        rows.append(row)
    return rows


def markdown(rows, summary, scale, steps, reference, aioli) -> str:
    names = list(summary)
    lines = [f"One Aioli run of {steps} steps of {scale.batch_size} x {scale.seq_len} tokens (LearnParams of "
             f"{aioli.lp_rounds} x K x {aioli.lp_steps} steps every {aioli.update_steps}, eta {aioli.eta}; "
             f"{len(rows)} updates). Each estimate's update against an independent one from "
             f"{reference} other validation batches per domain: L1 distance between the weights they step to "
             "(the step itself is shown for scale) and cosine between the EG directions.", "",
             "| validation batches per domain | forward passes per training step | median L1 distance | "
             "median step L1 | median cosine |", "|---|---|---|---|---|"]
    for name in names:
        s = summary[name]
        lines.append(f"| {name} | {s['forward_passes_per_step']:.2f} | {s['median_distance_l1']:.4f} | "
                     f"{s['median_step_l1']:.4f} | {s['median_cosine']:.3f} |")
    lines += ["", "Per update (L1 distance / cosine):", "",
              "| update | step L1 | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in rows:
        lines.append(f"| {row['update']} | {row['step_size_l1']:.4f} | " + " | ".join(
            f"{row['candidates'][n]['distance_l1']:.4f} / {row['candidates'][n]['cosine']:.2f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = common.common_arguments(__doc__.splitlines()[0], "li2025_grid")
    p.add_argument("--steps", type=int, default=1500, help="steps of the Aioli run (250 per update)")
    p.add_argument("--reference", type=int, default=6, help="validation batches per domain of the reference estimate")
    args = p.parse_args(argv)

    def run() -> int:
        from mixjax.methods import get
        from mixjax.methods.online_callback import OnlineMethodCallback
        from mixjax.train import run_training

        scale = common.scale_from(args)
        started = time.perf_counter()
        data, config = common.setup(Path(args.work), scale, progress=not args.quiet, data_dir=args.data,
                                    init=args.init)
        steps = args.steps if not args.quick else 24
        options = {} if not args.quick else {"lp_rounds": 1, "lp_steps": 2, "update_steps": 8}
        reference = args.reference if not args.quick else 2
        method = get("aioli", len(data.domains), **options)
        callback = OnlineMethodCallback(method, eval_max_batches=max(CANDIDATES))
        probe = EvalSizeProbe(method, reference, strict=not args.quick)
        config = dataclasses.replace(config, progress=not args.quiet)
        uniform = {d: 1 / len(data.domains) for d in data.domains}
        common.log(f"aioli: {steps} steps, probing {', '.join(probe.sets)}")
        result = run_training(config, data, uniform, steps * scale.batch_size * scale.seq_len,
                              callbacks=[probe, callback])
        rows = compare(probe, method.state["a"])
        if not all(r["run_matches_4_batches"] for r in rows):
            raise AssertionError("the run's A differs from the 4-batch shadow's: the probe measures something else")
        evaluations = result["online"]["evaluations"]
        summary = {}
        for name in rows[0]["candidates"] if rows else []:
            n = int(name.split()[0])
            summary[name] = {
                "batches": n,
                "forward_passes_per_step": evaluations * n * len(data.domains) / steps,
                "median_distance_l1": float(np.median([r["candidates"][name]["distance_l1"] for r in rows])),
                "median_step_l1": float(np.median([r["step_size_l1"] for r in rows])),
                "median_cosine": float(np.median([r["candidates"][name]["cosine"] for r in rows])),
            }
        payload = {"steps": steps, "scale": dataclasses.asdict(scale), "reference_batches": reference,
                   "aioli": dataclasses.asdict(method.config), "evaluations": evaluations,
                   "updates": rows, "summary": summary, "final_weights": result["online"]["weights"]}
        md = markdown(rows, summary, scale, steps, reference, method.config)
        common.write_results(Path(args.results), "aioli_eval_size" + ("_quick" if args.quick else ""), payload, md, {},
                             time.perf_counter() - started)
        print(md)
        return 0

    return common.exit_code("aioli_eval_size.py", run)


if __name__ == "__main__":
    sys.exit(main())
