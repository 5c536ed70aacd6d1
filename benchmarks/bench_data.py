"""Data-layer throughput on the bundled domains: `mixjax prepare` tokens/s and the mixture
sampler's tokens/s of packed batches (which must be >= 10x what the tiny model trains at).

    python benchmarks/bench_data.py [--size-mb 2] [--out benchmarks/results/data.json]

Prints the figures and writes them as JSON. Medians over repeats; CPU use recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from mixjax.data.bundled import write_bundled
from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
from mixjax.data.prepared import PreparedData
from mixjax.data.sampler import MixtureSampler
from mixjax.io import write_json_atomic


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/data.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_bundled(tmp / "src", int(args.size_mb * 1e6))
        specs = [parse_domain_flag(f"{d}={tmp / 'src' / (d + '.jsonl')}") for d in ("dialogue", "math", "code")]
        prepare_runs = []
        for r in range(args.repeats):
            manifest, wall, cpu = timed(lambda: prepare(specs, tmp / f"prep{r}", PrepareOptions(), progress=False))
            tokens = sum(d[s]["tokens"] for d in manifest["domains"].values() for s in ("train", "validation"))
            prepare_runs.append({"tokens": tokens, "seconds": wall, "cpu_cores_busy": cpu / wall})
        data = PreparedData(tmp / "prep0")
        sampler_runs = {}
        for batch, seq in ((16, 256), (8, 1024)):
            runs = []
            for _ in range(args.repeats):
                sampler = MixtureSampler(data, {"dialogue": 0.4, "math": 0.3, "code": 0.3}, batch_size=batch,
                                         seq_len=seq, num_steps=2_000_000 // (batch * seq), seed=0)
                _, wall, cpu = timed(lambda: sum(1 for _ in sampler))
                runs.append({"tokens": sampler.num_steps * batch * seq, "seconds": wall, "cpu_cores_busy": cpu / wall})
            sampler_runs[f"{batch}x{seq}"] = runs

    def median_rate(runs):
        return statistics.median(r["tokens"] / r["seconds"] for r in runs)

    results = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "prepare_tokens_per_second": median_rate(prepare_runs),
        "prepare_runs": prepare_runs,
        "sampler_tokens_per_second": {k: median_rate(v) for k, v in sampler_runs.items()},
        "sampler_runs": sampler_runs,
        "command": "python benchmarks/bench_data.py",
    }
    print(f"prepare: {results['prepare_tokens_per_second']:,.0f} tokens/s "
          f"({prepare_runs[0]['tokens']:,} tokens, {statistics.median(r['cpu_cores_busy'] for r in prepare_runs):.2f} cores busy)")
    for k, rate in results["sampler_tokens_per_second"].items():
        busy = statistics.median(r["cpu_cores_busy"] for r in sampler_runs[k])
        print(f"sampler {k}: {rate:,.0f} tokens/s of packed batches ({busy:.2f} cores busy)")
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
