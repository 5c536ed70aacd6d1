"""Offline designs: the simplex grid and li2025's perturbation runs."""

import numpy as np
import pytest

from mixjax.errors import MixjaxError
from mixjax.methods.li2025_design import perturbation_runs
from mixjax.methods.static import Grid, Stratified, simplex_grid
from mixjax.observations import Observations
from tests.law_fixtures import paper_like_law


def test_grid_of_eighths_is_the_papers_21_mixtures():
    grid = simplex_grid(3, 1 / 8)
    assert grid.shape == (21, 3)
    np.testing.assert_allclose(grid.sum(axis=1), 1)
    assert set(np.unique(grid)) == {k / 8 for k in range(1, 7)}          # 0.125 .. 0.75, never 0
    assert len({tuple(g) for g in grid}) == 21
    assert simplex_grid(3, 1 / 8, include_zero=True).shape == (45, 3)    # C(10, 2)
    assert simplex_grid(2, 1 / 4).tolist() == [[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]]
    with pytest.raises(MixjaxError, match="must be 1/n"):
        simplex_grid(3, 0.3)


def test_grid_recommends_lowest_total_loss():
    runs = Grid(step=0.5).propose(["a", "b"], 1000)
    assert [r.weights for r in runs] == [{"a": 0.5, "b": 0.5}]
    observations = Observations(runs=["r1", "r2", "r3"], domains=["b", "a"],
                                tokens=[[750, 250], [400, 600], [100, 900]],
                                losses=[[1.0, 2.0], [1.2, 1.5], [np.nan, 0.1]])  # r3 incomplete
    assert Grid().recommend(observations, ["a", "b"], 1000) == {"a": 0.6, "b": 0.4}
    assert Stratified().recommend([], ["a", "b", "c", "d"], 1) == {d: 0.25 for d in "abcd"}


def test_li2025_perturbation_design():
    runs = perturbation_runs(["if", "math", "code"], 660_000)
    assert len(runs) == 1 + 4 * 3 and len({r.name for r in runs}) == 13
    base = runs[0]
    assert base.name == "base" and base.budget_tokens == 3 * 660_000
    assert base.weights == pytest.approx({"if": 1 / 3, "math": 1 / 3, "code": 1 / 3})
    quarter = next(r for r in runs if r.name == "math-x0.25")
    tokens = {d: w * quarter.budget_tokens for d, w in quarter.weights.items()}
    assert tokens == pytest.approx({"if": 660_000, "math": 165_000, "code": 660_000})
    triple = next(r for r in runs if r.name == "code-x3")
    assert triple.budget_tokens == 5 * 660_000 and triple.weights["code"] == pytest.approx(0.6)
    with pytest.raises(MixjaxError, match="at least 2 domains"):
        perturbation_runs(["if"], 10)
    with pytest.raises(MixjaxError, match="not 1"):
        perturbation_runs(["a", "b"], 10, factors=(1.0,))


def _observe(truth, runs, noise, seed):
    from mixjax.testing import simulate

    tokens = np.array([[r.weights[d] * r.budget_tokens for d in truth.domains] for r in runs])
    return simulate(truth, [r.name for r in runs], tokens, noise=noise, seed=seed)


def test_li2025_method_recovers_the_true_optimum_in_simulation():
    """Noise-free runs at a tenth of the budget pin the optimum down exactly; with 0.2% loss noise
    the runs must sit nearer the target budget (extrapolating 10x then misses by up to 0.07)."""
    from mixjax.fit import FitOptions
    from mixjax.methods.offline import Li2025
    from mixjax.optimize import optimize

    truth = paper_like_law()
    budget = 20_000_000
    true_weights = optimize(truth, [budget]).weights[0]
    options = FitOptions(n_bootstrap=0, leave_one_out=False)
    for base_fraction, noise, tolerance in ((0.1, 0.0, 1e-3), (1.0, 0.002, 0.02)):
        method = Li2025(base_fraction=base_fraction, fit_options=options)
        runs = method.propose(truth.domains, budget)
        assert len(runs) == 13
        got = method.recommend(_observe(truth, runs, noise=noise, seed=0), truth.domains, budget)
        np.testing.assert_allclose([got[d] for d in truth.domains], true_weights, atol=tolerance)
        assert method.fitted.law.name == "li2025"


def test_li2025_fits_the_papers_huber_loss_by_default():
    """li2025 fits with Huber delta 1e-3 (the authors' setting; dml keeps least squares), and
    huber_delta=0 (`--huber 0`) is least squares. With one run's loss off by 0.05 on one domain, the
    Huber fit (nearly L1 beyond 1e-3) still passes through the other, exact runs and leaves the
    outlier's residual near 0.05; least squares would spread it over the other runs."""
    from mixjax.fit import FitOptions
    from mixjax.methods.offline import DataMixingLaws, Li2025
    from mixjax.testing import simulate

    truth, budget = paper_like_law(), 20_000_000
    fast = FitOptions(n_bootstrap=0, leave_one_out=False)
    method = Li2025(base_fraction=0.1, fit_options=fast)
    assert method.fit_options.huber_delta == 1e-3 and method.fit_options.n_bootstrap == 0
    assert Li2025(huber_delta=0).fit_options.huber_delta is None and DataMixingLaws().fit_options.huber_delta is None
    with pytest.raises(MixjaxError, match="huber_delta: must be a positive delta"):
        Li2025(huber_delta=-1e-3)

    runs = method.propose(truth.domains, budget)
    clean = _observe(truth, runs, noise=0.0, seed=0)
    losses = clean.losses.copy()
    losses[4, 1] += 0.05
    method.recommend(Observations(clean.runs, clean.domains, clean.tokens, losses), truth.domains, budget)
    assert method.fitted.diagnostics["fit"]["huber_delta"] == 1e-3     # what the fit used (law.json)
    residual = losses - simulate(method.fitted, clean.runs, clean.tokens).losses
    assert residual[4, 1] == pytest.approx(0.05, abs=2e-3)
    assert np.abs(np.delete(residual, 4, axis=0)).max() < 2e-3          # 7e-4; least squares: 0.019


def test_regmix_finds_the_minimum_of_a_quadratic_total_loss():
    from mixjax.methods.offline import RegMix
    from mixjax.observations import Observations

    target = np.array([0.5, 0.3, 0.2])
    method = RegMix(seed=1)
    runs = method.propose(["a", "b", "c"], 4000)
    p = np.array([[r.weights[d] for d in "abc"] for r in runs])
    total = 3.0 + ((p - target) ** 2).sum(axis=1)                  # a quadratic bowl
    obs = Observations([r.name for r in runs], list("abc"), p * 1000, np.stack([total / 3] * 3, 1))
    got = method.recommend(obs, list("abc"), 4000)
    np.testing.assert_allclose([got[d] for d in "abc"], target, atol=0.03)
    with pytest.raises(MixjaxError, match="too few"):
        RegMix(n_runs=3).propose(list("abc"), 4000)
