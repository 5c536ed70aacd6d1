"""The README's summary table: every experiment's methods in one table, read from results/*.json.

For each setting and method: the share of the stratified-to-grid-best gap it recovers (where a
grid was trained; mean ± standard error over the seeds with a gap), its total validation loss
minus stratified's (paired by seed, mean ± standard error), the runs it trained and the seeds.
Nothing is trained here: rerun the experiments to change the numbers.

    python experiments/summary.py            # prints the table and writes results/summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GRID_EXPERIMENTS = (("li2025_grid", "balanced: 3 bundled domains of ~2 MB"),
                    ("li2025_grid-skewed", "skewed: dialogue, code, docs at natural 0.77/0.18/0.05"))
GRID_METHODS = ("natural", "li2025", "dml", "regmix", "aioli", "doge", "doremi", "skillit")
COMPACT = ("natural", "li2025", "dml", "regmix")  # --compact: the README's rows of the grid settings


def _se(d: dict) -> str:
    return f"{d['mean']:+.4f}" + (f" ± {d['se']:.4f}" if d.get("se") is not None else "")


def _gap(g: dict) -> str:
    if not np.isfinite(g["mean"]):
        return "no gap on any seed"
    out = f"{g['mean']:.2f}" + (f" ± {g['se']:.2f}" if g["se"] is not None else "")
    return out + (f" ({g['n']} of {len(g['per_seed'])} seeds)" if g["n"] < len(g["per_seed"]) else "")


def grid_rows(payload: dict, setting: str, link: str, methods=GRID_METHODS) -> list[str]:
    rows = payload["rows"]
    strat = rows["stratified"]["regret_per_seed"]
    seeds = len(strat)
    out = [f"| {setting} | stratified | 0 (its regret {common.mean_std(strat)[0]:+.4f} nats) | - | 1 | {seeds} | {link} |"]
    for m in methods:
        if m not in rows:
            continue
        regret = rows[m]["regret_per_seed"]
        gap = common.gap_recovered(regret, strat)
        diff = common.paired_difference(regret, strat)
        out.append(f"| {setting} | {m} | {_gap(gap)} | {_se(diff)} | {rows[m]['runs']} | {seeds} | {link} |")
    out.append(f"| {setting} | grid (best of {rows['grid']['runs']}) | 1 | "
               f"{_se(common.paired_difference([0.0] * seeds, strat))} | {rows['grid']['runs']} | {seeds} | {link} |")
    return out


def aioli_rows(payload: dict, link: str) -> list[str]:
    out = []
    for setting, rows in payload["table"].items():
        for arm, r in rows.items():
            if arm == "stratified":
                continue
            d = r["total_minus_stratified"]
            runs = "1 + li2025's 13 short runs" if "li2025" in arm else "1"  # the restricted setting's prior
            out.append(f"| {setting}, {payload['steps']:,} steps, {payload['rounds']} rounds | {arm} | no grid | "
                       f"{_se(d)} | {runs} | {d['n']} | {link} |")
    return out


def collection_rows(payload: dict, link: str) -> list[str]:
    d = payload["optimised_minus"]["stratified"]
    runs = len(payload["fit"]["runs"]) + 1
    n = d["n"]
    nat = payload["optimised_minus"]["natural"]
    return [f"| 4-source collection (natural 0.57/0.26/0.13/0.04) | li2025 | no grid | {_se(d)} "
            f"(natural minus stratified {_se(common.paired_difference(payload['rows']['natural']['totals'], payload['rows']['stratified']['totals']))}; "
            f"li2025 minus natural {_se(nat)}) | {runs} | {n} | {link} |"]


def adaptive_rows(payload: dict, link: str) -> list[str]:
    out = []
    for arm in ("li2025 fixed", "li2025 adaptive"):
        r = payload["rows"].get(arm)
        if r is None:
            continue
        strat = payload["rows"]["stratified"]["regret_per_seed"]
        gap = common.gap_recovered(r["regret_per_seed"], strat)
        diff = common.paired_difference(r["regret_per_seed"], strat)
        out.append(f"| balanced, final losses | {arm} | {_gap(gap)} | {_se(diff)} | {r['runs']:g} | "
                   f"{len(strat)} | {link} |")
    return out


def extrapolation_rows(payload: dict, link: str, variants=None) -> list[str]:
    """li2025 at the target from runs sized for T/d: one row per variant and extrapolation ratio
    (`variants`: only these, e.g. the README's li2025)."""
    rows = payload["rows"]
    strat = rows["stratified"]["regret_per_seed"]
    setting = f"{payload['setting']} at {payload['setup']['target']:,} tokens"
    out = []
    for r in rows.values():
        if "ratio" not in r or (variants and r["variant"] not in variants):
            continue
        gap = common.gap_recovered(r["regret_per_seed"], strat)
        diff = common.paired_difference(r["regret_per_seed"], strat)
        out.append(f"| {setting}, target {r['ratio']:.3g}x the largest run | {r['variant']} | {_gap(gap)} | "
                   f"{_se(diff)} | {r['runs']} ({r['runs_cost']:.2g} runs at the target) | {len(strat)} | {link} |")
    return out


def table(results: Path, compact: bool = False) -> str:
    lines = ["| setting | method | gap recovered (stratified = 0, grid's best = 1) | total loss minus stratified "
             "(nats, paired by seed) | runs | seeds | detail |", "|---|---|---|---|---|---|---|"]
    grid = (lambda p, setting, link: grid_rows(p, setting, link, COMPACT)) if compact else grid_rows
    readers = [*((name, setting, grid) for name, setting in GRID_EXPERIMENTS),
               ("adaptive_real", None, adaptive_rows), ("aioli_long", None, aioli_rows),
               ("reweight_collection", None, collection_rows),
               *((f"extrapolation-{setting}", None,
                  (lambda p, link: extrapolation_rows(p, link, ("li2025",))) if compact else extrapolation_rows)
                 for setting in ("skewed", "repeated"))]
    for name, setting, reader in readers:
        path = results / f"{name}.json"
        if not path.is_file():
            continue
        payload = json.loads(path.read_text())
        link = f"[{name}.md]({'results/' if compact else ''}{name}.md)"  # the README links from the root
        lines += reader(payload, setting, link) if setting else reader(payload, link)
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(common.ROOT / "results"))
    p.add_argument("--compact", action="store_true",
                   help=f"grid settings: only {', '.join(COMPACT)}, stratified and the grid (the README's table); "
                        "printed with links from the repository root; results/summary.md is not written")
    args = p.parse_args(argv)
    from mixjax.io import write_text_atomic

    md = table(Path(args.results), args.compact)
    note = ("Gap recovered: 1 - regret / stratified's regret against the best grid mixture of the same seed, "
            "mean ± standard error over the seeds where stratified is behind it. Runs: every run a method "
            "trained, its final run included.")
    print(md + "\n\n" + note)
    if args.compact:
        return 0
    write_text_atomic(Path(args.results) / "summary.md",
                      f"<!-- made by `python experiments/summary.py`; edit the script, not this file -->\n"
                      f"{md}\n\n{note}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
