"""`mixjax demo --quick`: the whole li2025 pipeline end to end on the skewed bundled collection,
each saving printed with its seed noise, and its caching."""

import json

import numpy as np
import pytest

from mixjax.cli import main
from mixjax.demo import verdict


def test_verdict_reads_a_difference_against_twice_its_noise():
    assert verdict(0.21, 0.01) == "the optimised weights win"
    assert verdict(-0.05, 0.02) == "the optimised weights lose"
    assert verdict(0.03, 0.02) == verdict(-0.04, 0.02) == "within the seed noise"
    assert verdict(0.5, float("nan")) == "within the seed noise"  # one seed: no noise to read it against


@pytest.mark.slow
def test_quick_demo_runs_the_pipeline_on_skewed_domains_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    weights = np.array(list(summary["optimised_weights"].values()))
    # a mixture; a domain at exactly 0 is a legitimate corner optimum
    assert weights.min() >= 0 and abs(weights.sum() - 1) < 1e-9
    law = json.loads((out / "law.json").read_text())
    assert law["law"] == "li2025" and law["diagnostics"]["n_runs"] == 13
    assert not law["diagnostics"]["under_determined"]
    saved = json.loads((out / "weights.json").read_text())
    assert [r["budget"] for r in saved["results"]] == [8192, 81920]

    # the skewed collection: domains of very different sizes, natural proportions from the manifest
    manifest = json.loads((out / "data_skewed" / "manifest.json").read_text())
    train_tokens = {d: m["train"]["tokens"] for d, m in manifest["domains"].items()}
    natural = {d: t / sum(train_tokens.values()) for d, t in train_tokens.items()}
    assert sorted(natural) == summary["domains"] == ["code", "dialogue", "docs"]
    assert natural["dialogue"] > 4 * max(natural["code"], natural["docs"])
    assert summary["baseline_weights"]["natural"] == pytest.approx(natural)

    # two seeds of every arm; each saving is the paired mean difference, its noise the standard
    # error over the two seeds: |d0 - d1| / 2
    totals = {}
    for name in ("optimised", "stratified", "natural"):
        totals[name] = []
        for seed in (0, 1):
            result = json.loads((out / "skewed" / "verify" / f"{name}-seed{seed}" / "result.json").read_text())
            assert sum(result["tokens"].values()) == 8192 and result["config"]["seed"] == seed
            assert result["val_loss"] == summary["val_loss_per_seed"][name][str(seed)]
            totals[name].append(sum(result["val_loss"].values()))
        assert totals[name][0] != totals[name][1]  # the seeds differ: there is noise to measure
    assert result["weights"] == pytest.approx(natural)
    printed = capsys.readouterr().out
    for name in ("stratified", "natural"):
        d = np.array(totals[name]) - np.array(totals["optimised"])
        saves = summary["optimised_saves"][name]
        assert saves["mean"] == pytest.approx(d.mean()) and saves["noise"] == pytest.approx(abs(d[0] - d[1]) / 2)
        assert (f"- against {name}: {saves['mean']:+.4f} ± {saves['noise']:.4f} nats (per seed "
                f"{d[0]:+.4f}, {d[1]:+.4f}): {verdict(saves['mean'], saves['noise'])}") in printed
    assert all((out / "plots" / p).is_file() for p in ("fit.png", "weights_vs_budget.png"))
    assert "[3/6] [13/13] docs-x3" in printed and "| optimised |" in printed and "| natural |" in printed
    assert (out / "summary.md").read_text() in printed

    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0   # everything cached
    again = capsys.readouterr().out
    assert "base model cached" in again and "docs-x3: done already" in again
    assert json.loads((out / "summary.json").read_text())["val_loss_per_seed"] == summary["val_loss_per_seed"]
