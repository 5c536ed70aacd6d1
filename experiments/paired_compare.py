"""Two aioli_compare.py results on the same base model and seeds, method by method: each one's
difference to stratified in each setting, the settings it beats stratified in, and the paired
difference B - A of its perplexity per (setting, seed). Stratified must be identical in both
(same base, data and seeds), else the pairing means nothing and the script says so.

    python experiments/paired_compare.py results/online_before_released/aioli_compare.json \
        results/online_as_released/aioli_compare.json --labels before,released
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def perplexity(val_loss: dict) -> float:
    return float(np.mean([np.exp(v) for v in val_loss.values()]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--labels", default="A,B", help="names of the two results, comma-separated")
    args = p.parse_args(argv)
    labels = args.labels.split(",")
    a, b = (json.load(open(path)) for path in (args.a, args.b))
    settings = [s for s in a["table"] if s in b["table"]]
    for s in settings:
        for seed in a["results"][s]:
            if a["results"][s][seed]["stratified"]["val_loss"] != b["results"][s][seed]["stratified"]["val_loss"]:
                print(f"paired_compare.py: error: stratified differs in {s} seed {seed}: not the same base "
                      "model, data and seeds", file=sys.stderr)
                return 2
    methods = [m for m in b["table"][settings[0]] if m != "stratified" and all(m in a["table"][s] for s in settings)]
    print("| method | rules | " + " | ".join(settings) + " | beats stratified |")
    print("|---|---|" + "---|" * len(settings) + "---|")
    print("| stratified (perplexity) | | "
          + " | ".join(f"{b['table'][s]['stratified']['perplexity'][0]:.3f}" for s in settings) + " | - |")
    for m in methods:
        for label, doc in zip(labels[::-1], (b, a)):
            cells = [f"{doc['table'][s][m]['diff'][0]:+.3f} ± {doc['table'][s][m]['diff'][1]:.3f}" for s in settings]
            wins = sum(doc["table"][s][m]["beats"] for s in settings)
            print(f"| {m} | {label} | " + " | ".join(cells) + f" | {wins}/{len(settings)} |")
    print(f"\nPaired {labels[1]} - {labels[0]} perplexity per (setting, seed):")
    for m in methods:
        diffs = [perplexity(b["results"][s][seed][m]["val_loss"]) - perplexity(a["results"][s][seed][m]["val_loss"])
                 for s in settings for seed in a["results"][s]]
        worse = sum(d > 0 for d in diffs)
        print(f"  {m}: mean {np.mean(diffs):+.3f}, worse in {worse} of {len(diffs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
