"""What cheaper evaluation schemes of li2025's perturbation runs would change: picks, reported
losses and the fitted weights (benchmarks/README.md, "Evaluation in li2025's perturbation runs").

    python benchmarks/eval_schemes.py --data DIR --init BASE --out SWEEP_DIR [--sweep-flags "--seed 1"]
        [--out-json FILE]

Trains the full li2025 sweep (`mixjax sweep --method li2025 --budget-tokens 250k --batch-size 16
--seq-len 256 --lr 1e-3`, the defaults otherwise) and records, at every evaluation step of every
run, each validation batch's loss sum and target count on the whole split (SWEEP_DIR.batches.jsonl;
an existing record is reused, not retrained). Then recomputes, for each scheme, every run's pick and
reported loss from that record (the default's must equal the runs' own result.json), refits the
law and optimises it at 250k. Slow: each evaluation step costs a whole-split pass (~35 min on 2
shared cores).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np

SCHEMES = {  # name: (selection batches per domain (None: all), last evaluations only, report batches)
    "default (10 evaluations on 1 batch, whole split)": (1, None, None),
    "picked on the whole split at every evaluation": (None, None, None),
    "last 5 evaluations": (1, 5, None), "last 3 evaluations": (1, 3, None), "last evaluation": (1, 1, None),
    "report on 8 batches per domain": (1, None, 8), "report on 4 batches per domain": (1, None, 4),
    "report on 2 batches per domain": (1, None, 2), "last 3 evaluations, report on 4": (1, 3, 4),
}


def record_sweep(data: str, init: str, out: Path, record: Path, flags: list[str]) -> None:
    """The sweep, with every evaluation step's per-batch sums on the whole split written to `record`."""
    from mixjax.cli import main
    from mixjax.train import loop

    plain_step = loop._Run.step
    with record.open("a") as f:
        def step(run, i, num_steps, lr, progress):
            plain_step(run, i, num_steps, lr, progress)
            if i + 1 == num_steps or (run.cfg.eval_every and (i + 1) % run.cfg.eval_every == 0):
                sums = run.evaluator.batch_sums(max_batches=None, params=run.state["params"])
                f.write(json.dumps({"run": run.run_dir.out.name, "step": i + 1, "sums": sums}) + "\n")
                f.flush()

        loop._Run.step = step
        try:
            main(["sweep", "--method", "li2025", "--data", data, "--init", init, "--out", str(out), "--budget-tokens",
                  "250k", "--batch-size", "16", "--seq-len", "256", "--lr", "1e-3", "--quiet", *flags])
        finally:
            loop._Run.step = plain_step


def mean_loss(sums, k) -> float:
    """The mean over a domain's first k batches (None: all), summed in batch order as the loop does."""
    pairs = sums[:k] if k else sums
    return sum(p[0] for p in pairs) / sum(p[1] for p in pairs)


def apply_scheme(points, domains, select_k, last, report_k):
    """(picked step, {domain: reported loss}, forward batches) of one run under a scheme."""
    candidates = points[-last:] if last else points
    means = [float(np.mean([mean_loss(q["sums"][d], select_k) for d in domains])) for q in candidates]
    picked = candidates[int(np.argmin(means))]  # the first of equal means, as the loop keeps
    cost = len(candidates) * sum(min(select_k or 10**6, len(picked["sums"][d])) for d in domains) \
        + sum(min(report_k or 10**6, len(picked["sums"][d])) for d in domains)
    return picked["step"], {d: mean_loss(picked["sums"][d], report_k) for d in domains}, cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sweep-flags", default="", help="more `mixjax sweep` flags, e.g. --seed 1")
    parser.add_argument("--out-json", default="benchmarks/results/eval_schemes.json")
    args = parser.parse_args()
    from mixjax import laws
    from mixjax.data.prepared import PreparedData
    from mixjax.io import write_json_atomic
    from mixjax.methods.base import ProposedRun
    from mixjax.methods.offline import Li2025
    from mixjax.runners.sweep import observations_from_results

    record = args.out.with_name(args.out.name + ".batches.jsonl")
    if not record.is_file():
        record_sweep(args.data, args.init, args.out, record, shlex.split(args.sweep_flags))
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    data = PreparedData(args.data)
    domains, runs = list(data.domains), sorted({r["run"] for r in rows})
    points = {run: [r for r in rows if r["run"] == run] for run in runs}
    obs = observations_from_results(args.out, [ProposedRun(r, {}, 0) for r in runs], domains)
    for run in runs:  # the record reproduces the runs' own picks and reported losses
        res = json.loads((args.out / "runs" / run / "result.json").read_text())
        step, val, _ = apply_scheme(points[run], domains, 1, None, None)
        assert step == res["val_loss_step"] and all(abs(val[d] - res["val_loss"][d]) < 1e-9 for d in domains), run
    available = {d: float(n) for d, n in data.train_tokens().items()}
    results, reference = {}, None
    for name, scheme in SCHEMES.items():
        outcome = {r: apply_scheme(points[r], domains, *scheme) for r in obs.runs}
        losses = np.array([[outcome[r][1][d] for d in domains] for r in obs.runs])
        method = Li2025(available=available, max_epochs=10.0)
        weights = method.recommend(type(obs)(obs.runs, domains, obs.tokens, losses), domains, 250_000)
        w = np.array([weights[d] for d in domains])
        reference = reference or (method.fitted, w, losses, [outcome[r][0] for r in obs.runs])
        law, ref_w = reference[0], reference[1]
        total = lambda x: float(np.sum(laws.predict(law.law, law.params, x * 250_000 / law.token_unit)))  # noqa: E731
        results[name] = {"forward_batches_per_run": float(np.mean([outcome[r][2] for r in obs.runs])),
                         "picks_changed": sum(a != outcome[r][0] for a, r in zip(reference[3], obs.runs)),
                         "max_loss_change": float(np.max(np.abs(losses - reference[2]))),
                         "weights": dict(zip(domains, w.round(4).tolist())), "regret": total(w) - total(ref_w)}
        print(f"{name:50s} " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in results[name].items()), flush=True)
    write_json_atomic(args.out_json, {"domains": domains, "schemes": results})


if __name__ == "__main__":
    main()
