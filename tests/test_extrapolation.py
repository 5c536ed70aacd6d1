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


def test_grid_surface_recovers_a_quadratic_truth_and_its_noise():
    """On a grid whose totals are a known quadratic, the smoothed regret is that quadratic's excess
    over its own minimum (found independently by scipy); with noise, the residual std is the noise's."""
    import extrapolation
    from scipy.optimize import minimize

    from mixjax.methods.static import simplex_grid

    domains = ["a", "b", "c"]
    truth = lambda w: 7.0 + 2 * (w[0] - 0.5) ** 2 + (w[1] - 0.2) ** 2 + 0.5 * w[0] * w[1]
    optimum = minimize(lambda x: truth([x[0], x[1], 1 - x[0] - x[1]]), [0.3, 0.3], method="SLSQP",
                       bounds=[(0, 1), (0, 1)], constraints=[{"type": "ineq", "fun": lambda x: 1 - x[0] - x[1]}]).fun
    grid = [{"weights": dict(zip(domains, w)), "val_loss": {"a": truth(w), "b": 0.0, "c": 0.0}}
            for w in simplex_grid(3, 0.125)]
    regret, sigma = extrapolation.grid_surface(grid, domains)
    assert sigma == pytest.approx(0.0, abs=1e-9)
    w = {"a": 0.3, "b": 0.3, "c": 0.4}
    assert regret(w) == pytest.approx(truth([0.3, 0.3, 0.4]) - optimum, abs=2e-4)  # the 1/40 search grid
    rng = np.random.default_rng(0)
    noisy = [{**g, "val_loss": {**g["val_loss"], "b": float(rng.normal(0, 0.02))}} for g in grid * 20]
    assert extrapolation.grid_surface(noisy, domains)[1] == pytest.approx(0.02, rel=0.1)
    assert extrapolation.grid_surface(grid[:6], domains) is None  # 6 mixtures for 6 coefficients
