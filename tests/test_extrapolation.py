"""experiments/extrapolation.py at its quick scale: the gap each li2025 arm recovers and its
extrapolation ratio, recomputed from the runs' own result.json files."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))


def _total(run_dir: Path) -> float:
    return sum(json.loads((run_dir / "result.json").read_text())["val_loss"].values())


@pytest.mark.slow
def test_extrapolation_quick_gap_and_ratio_match_the_runs(tmp_path):
    import extrapolation

    work, results = tmp_path / "work", tmp_path / "results"
    assert extrapolation.main(["--quick", "--quiet", "--variants", "li2025", "--work", str(work),
                               "--results", str(results)]) == 0
    payload = json.loads((results / "extrapolation-skewed_quick.json").read_text())
    rows = payload["rows"]
    seed = work / "skewed" / "seed0"
    best = min(_total(r) for r in (seed / "grid" / "runs").iterdir())
    grid_weights = sorted(tuple(json.loads((r / "result.json").read_text())["weights"][d] for d in payload["domains"])
                          for r in (seed / "grid" / "runs").iterdir())
    assert np.allclose(grid_weights, [(0.25, 0.25, 0.5), (0.25, 0.5, 0.25), (0.5, 0.25, 0.25)])  # the quick 1/4 grid
    strat_regret = _total(seed / "stratified" / "final") - best
    row = rows["li2025 T/4"]
    runs = sorted((seed / "runs-d4" / "runs").iterdir())
    assert len(runs) == 13
    sizes = [json.loads((r / "result.json").read_text())["budget_tokens"] for r in runs]
    assert row["ratio"] == pytest.approx(16_384 / max(sizes), rel=1e-9) and row["ratio"] > 4
    assert row["runs_cost"] == pytest.approx(sum(sizes) / 16_384, rel=1e-9)
    regret = _total(seed / "li2025-d4" / "final") - best
    assert row["regret_per_seed"][0] == pytest.approx(regret, abs=1e-9)
    expected = 1 - regret / strat_regret if strat_regret > 0 else np.nan
    got = row["gap_recovered"]["per_seed"][0]
    assert (np.isnan(expected) and np.isnan(got)) or got == pytest.approx(expected, abs=1e-9)
    weights = json.loads((seed / "li2025-d4" / "final" / "result.json").read_text())["weights"]
    assert np.allclose(row["weights_per_seed"][0], [weights[d] for d in payload["domains"]])
    assert "li2025 T/16" not in rows  # its runs would have under min_steps steps
    assert not (seed / "runs-d4-target_budget").exists()  # a variant not asked for trains nothing
    markdown = (results / "extrapolation-skewed_quick.md").read_text()
    assert "| li2025 T/4 |" in markdown and (results / "extrapolation-skewed_quick_gap_vs_ratio.png").is_file()


def test_extrapolation_refuses_bad_divisors_and_variants_before_training(tmp_path, capsys):
    import extrapolation

    assert extrapolation.main(["--quick", "--divisors", "4,x", "--work", str(tmp_path)]) == 2
    assert "--divisors" in capsys.readouterr().err
    assert extrapolation.main(["--quick", "--variants", "li2025,nosuch", "--work", str(tmp_path)]) == 2
    assert "--variants: unknown nosuch" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
