"""`mixjax demo --quick`: the whole li2025 pipeline end to end, and its caching."""

import json

import numpy as np
import pytest

from mixjax.cli import main


@pytest.mark.slow
def test_quick_demo_runs_the_pipeline_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    weights = np.array(list(summary["optimised_weights"].values()))
    # a mixture; a domain at exactly 0 is a legitimate corner optimum (the quick run's bootstrap
    # interval for code reaches 0)
    assert weights.min() >= 0 and abs(weights.sum() - 1) < 1e-9
    law = json.loads((out / "law.json").read_text())
    assert law["law"] == "li2025" and law["diagnostics"]["n_runs"] == 13
    assert not law["diagnostics"]["under_determined"]
    saved = json.loads((out / "weights.json").read_text())
    assert [r["budget"] for r in saved["results"]] == [8192, 81920]
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    train_tokens = {d: m["train"]["tokens"] for d, m in manifest["domains"].items()}
    natural = {d: t / sum(train_tokens.values()) for d, t in train_tokens.items()}
    assert summary["baseline_weights"]["natural"] == pytest.approx(natural)
    totals = {}
    for name in ("optimised", "stratified", "natural"):
        result = json.loads((out / "verify" / name / "result.json").read_text())
        assert sum(result["tokens"].values()) == 8192
        assert result["val_loss"] == summary["val_loss"][name]
        totals[name] = sum(result["val_loss"].values())
    assert result["weights"] == pytest.approx(natural)
    for name in ("stratified", "natural"):
        assert summary["optimised_saves"][name] == pytest.approx(totals[name] - totals["optimised"])
    assert all((out / "plots" / p).is_file() for p in ("fit.png", "weights_vs_budget.png"))
    first = capsys.readouterr().out
    assert "[3/6] [13/13] code-x3" in first and "| optimised |" in first and "| natural |" in first
    assert f"{summary['optimised_saves']['natural']:+.4f} nats against natural" in first

    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0   # everything cached
    again = capsys.readouterr().out
    assert "base model cached" in again and "code-x3: done already" in again
    assert json.loads((out / "summary.json").read_text())["val_loss"] == summary["val_loss"]
