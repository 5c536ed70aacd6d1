"""Evaluation's share of a li2025 sweep's wall time (issue 24's target: at most 25%), for the
default settings and any variants, run alternately (A B A B) so that a shared machine's load
falls on each alike.

    python benchmarks/bench_eval_share.py [--work DIR] [--rounds 2] [--variant "--eval-max-batches 4" ...]
        [--out benchmarks/results/eval_share.json]

Each round trains runs base and math-x2 (`--shard 0/7`) of `mixjax sweep --method li2025
--budget-tokens 250k --batch-size 16 --seq-len 256 --lr 1e-3` on the bundled data from the
experiments' tiny base (both made once in WORK, as experiments/common.py makes them), and reads
each run's result.json timings: training, evaluation and its whole-split report pass. Prints them
with the load average and the reported losses, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mixjax.io import write_json_atomic

SWEEP = ["--method", "li2025", "--budget-tokens", "250k", "--batch-size", "16", "--seq-len", "256",
         "--lr", "1e-3", "--quiet", "--shard", "0/7"]


def prepared(work: Path) -> tuple[Path, Path]:
    """The bundled data and the experiments' tiny base, made in WORK once."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import common

    data, config = common.setup(work, common.Scale())
    return Path(data.directory), Path(config.init)


def one_sweep(data: Path, base: Path, flags: list[str], out: Path) -> dict:
    """Wall time of one sweep (a fresh process, as a user runs it) and its runs' timings."""
    cmd = ["mixjax", "sweep", "--data", str(data), "--init", str(base), "--out", str(out), *SWEEP, *flags]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    runs = {}
    for run in sorted((out / "runs").iterdir()):
        res = json.loads((run / "result.json").read_text())
        t = res["timings"]
        runs[run.name] = {"steps": res["steps"], "train_s": (t["first_step_s"] or 0.0) + t["train_s"],
                          "eval_s": t["eval_s"], "report_eval_s": t.get("report_eval_s"),
                          "val_loss_step": res["val_loss_step"],
                          "val_loss": {d: round(v, 5) for d, v in res["val_loss"].items()}}
    evaluation = sum(r["eval_s"] for r in runs.values())
    return {"flags": shlex.join(flags), "wall_s": wall, "train_s": sum(r["train_s"] for r in runs.values()),
            "eval_s": evaluation, "eval_share": evaluation / wall, "load": list(os.getloadavg()), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="benchmarks/results/eval_share_work")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], help="sweep flags to compare with the defaults")
    parser.add_argument("--out", default="benchmarks/results/eval_share.json")
    args = parser.parse_args()
    data, base = prepared(Path(args.work))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for j, flags in enumerate([""] + args.variant):
                r = one_sweep(data, base, shlex.split(flags), Path(tmp) / f"{i}-{j}")
                results.append(r)
                print(f"{r['flags'] or 'defaults':40s} wall {r['wall_s']:6.1f}s train {r['train_s']:6.1f}s "
                      f"eval {r['eval_s']:6.1f}s (report {sum(x['report_eval_s'] or 0 for x in r['runs'].values()):5.1f}s) "
                      f"share {r['eval_share']:.1%} load {r['load'][0]:.1f}  "
                      + "  ".join(f"{n}@{x['val_loss_step']} {x['val_loss']}" for n, x in r["runs"].items()), flush=True)
    write_json_atomic(args.out, {"results": results})


if __name__ == "__main__":
    main()
