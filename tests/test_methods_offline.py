"""Offline designs: the simplex grid and li2025's perturbation runs."""

import dataclasses

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


def test_li2025_design_budget_sizes_the_runs_not_the_target():
    """design_budget B: the runs are those of the design at budget B (the default B = the target);
    a B above the target, with `adaptive`, or not a whole number of tokens is a one-line error."""
    from mixjax.methods.offline import Li2025

    domains, target = ["if", "math", "code"], 8_000_000
    assert Li2025().propose(domains, target) == perturbation_runs(domains, int(0.25 * target / 3))
    cheap = Li2025(design_budget=500_000)
    assert cheap.propose(domains, target) == perturbation_runs(domains, int(0.25 * 500_000 / 3))
    assert cheap.propose(domains, target) == Li2025().propose(domains, 500_000)
    assert cheap.run_budget(target) == 500_000 and Li2025().run_budget(target) == target
    with pytest.raises(MixjaxError, match=r"design_budget 500,000 exceeds the target budget 400,000"):
        cheap.propose(domains, 400_000)
    with pytest.raises(MixjaxError, match="adaptive design sizes its own runs"):
        Li2025(design_budget=500_000, adaptive=True)
    with pytest.raises(MixjaxError, match="whole number of tokens >= 1, got 0"):
        Li2025(design_budget=0)


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


def _repeat_truth(r_star=3.0, unique_math=1.0):
    from mixjax.laws import FittedLaw
    from tests.law_fixtures import PAPER_LIKE

    params = dict(PAPER_LIKE["params"], R_star=[r_star] * 3, unique=[100.0, unique_math, 100.0])
    return FittedLaw.from_json({**PAPER_LIKE, "law": "li2025-repeat", "params": params})


@pytest.mark.slow  # two fits of a newly bound law, each compiled: ~20 s on a quiet machine
def test_li2025_repeat_law_recovers_r_star_and_the_optimum_from_runs_that_repeat():
    """Noise-free runs of which some repeat math (1M unique tokens; math-x3 is 2 passes): the
    li2025-repeat fit, given the unique tokens, finds R* = 3 and the truth's optimum at 20M, where
    math at its optimal weight is repeated several times; law.json keeps the unique tokens."""
    import dataclasses

    from mixjax.fit import FitOptions
    from mixjax.methods.offline import Li2025
    from mixjax.optimize import optimize

    truth, budget = _repeat_truth(), 20_000_000
    true_weights = optimize(truth, [budget]).weights[0]
    available = {"if": 100e6, "math": 1e6, "code": 100e6}
    method = Li2025(base_fraction=0.1, law="li2025-repeat", available=available, max_epochs=1e6,
                    fit_options=FitOptions(n_bootstrap=0, leave_one_out=False, fast_compile=True))
    got = method.recommend(_observe(truth, method.propose(truth.domains, budget), 0.0, 0), truth.domains, budget)
    np.testing.assert_allclose([got[d] for d in truth.domains], true_weights, atol=1e-3)
    assert true_weights[1] * budget / 1e6 > 3                         # math repeated > 3 times there
    np.testing.assert_allclose(method.fitted.params.R_star[1], 3.0, rtol=1e-3)
    np.testing.assert_allclose(method.fitted.params.unique, [100.0, 1.0, 100.0])  # token unit 1e6
    # repetition-matched runs at 1/16 of the target (none repeats math on all the data) identify R*
    # once the fit knows each run's cut (its total / target of every domain's unique tokens)
    matched = Li2025(target_budget=budget, available=available, max_epochs=1e6,
                     fit_options=FitOptions(n_bootstrap=0, leave_one_out=False, fast_compile=True))
    runs = matched.propose(truth.domains, budget // 16)
    cut_truth = [truth.params._replace(unique=truth.params.unique * r.budget_tokens / budget) for r in runs]
    observed = Observations([r.name for r in runs], truth.domains, _observe(truth, runs, 0.0, 0).tokens,
                            [_observe(dataclasses.replace(truth, params=p), [r], 0.0, 0).losses[0]
                             for p, r in zip(cut_truth, runs)])
    got = matched.recommend(observed, truth.domains, budget)
    np.testing.assert_allclose([got[d] for d in truth.domains], true_weights, atol=1e-3)
    np.testing.assert_allclose(matched.fitted.params.R_star[1], 3.0, rtol=1e-3)
    with pytest.raises(MixjaxError, match=r"^law li2025-repeat needs each domain's training tokens"):
        Li2025(law="li2025-repeat").recommend(_observe(truth, method.propose(truth.domains, budget), 0.0, 0),
                                              truth.domains, budget)


def test_li2025_repetition_options_shape_the_runs_and_refuse_bad_input():
    import dataclasses

    from mixjax.methods.offline import Li2025
    from mixjax.train import TrainConfig

    domains, budget = ["a", "b"], 80_000
    two_sizes = Li2025(scales=(1, 0.25)).propose(domains, budget)
    assert len(two_sizes) == 18 and two_sizes[9].name == "base-s0.25"
    assert two_sizes[9].budget_tokens == two_sizes[0].budget_tokens // 4
    matched = Li2025(target_budget=800_000)
    assert (matched.law_name, Li2025().law_name, Li2025(law="li2025", target_budget=10**6).law_name) == \
        ("li2025-repeat", "li2025", "li2025")
    config = TrainConfig(batch_size=2, seq_len=100)
    run = matched.propose(domains, budget)[0]
    cut = matched.run_config(config, run)
    assert cut.train_subset == run.budget_tokens / 800_000 and cut.select_best    # best of 3 evaluations kept
    along = Li2025(along_run=4).run_config(config, run)                            # 100 steps
    assert (along.schedule, along.eval_every, along.select_best) == ("constant", 25, False)
    assert dataclasses.replace(along, schedule="cosine", eval_every=0, select_best=False,
                               eval_max_batches=None) == config and along.eval_max_batches == 4
    with pytest.raises(MixjaxError, match=r"^target_budget 60,000 is smaller than the run budget 80,000"):
        Li2025(target_budget=60_000).propose(domains, budget)
    for kwargs, message in (({"law": "loglinear"}, "^law: li2025 fits"), ({"r_star": 15}, "^r_star: a positive"),
                            ({"target_budget": 10**6, "along_run": 4}, "^target_budget: the evaluations along a run"),
                            ({"along_run": 1}, "^along_run: evaluations per run"),
                            ({"scales": (1, 1)}, "^scales: distinct positive"),
                            ({"adaptive": True, "along_run": 4}, "^adaptive: the adaptive design")):
        with pytest.raises(MixjaxError, match=message):
            Li2025(**kwargs)


def test_along_run_rows_are_each_evaluation_at_the_tokens_trained_by_then(tmp_path):
    import json

    from mixjax.methods.base import ProposedRun
    from mixjax.runners.sweep import observations_from_results

    history = [{"step": s, "val_loss": {"a": 3.0 - s / 100, "b": 2.0}} for s in (25, 50, 75, 100)]
    result = {"tokens": {"a": 15_000, "b": 5_000}, "val_loss": history[-1]["val_loss"], "steps": 100,
              "val_history": history}
    (tmp_path / "runs" / "base").mkdir(parents=True)
    (tmp_path / "runs" / "base" / "result.json").write_text(json.dumps(result))
    runs = [ProposedRun("base", {"a": 0.75, "b": 0.25}, 20_000)]
    obs = observations_from_results(tmp_path, runs, ["a", "b"], along_run=True)
    assert obs.runs == ["base.step25", "base.step50", "base.step75", "base"]
    np.testing.assert_allclose(obs.tokens[:, 0], [3750, 7500, 11250, 15000])
    np.testing.assert_allclose(obs.losses[:, 0], [2.75, 2.5, 2.25, 2.0])
    assert observations_from_results(tmp_path, runs, ["a", "b"]).runs == ["base"]


def test_li2025_perturbation_runs_evaluate_a_bounded_subset_unless_told():
    """By default a perturbation run (100 steps here) is evaluated 3 times, every ceil(100 / 3) = 34
    steps, picked on 1 batch per domain and reported on the first 4 batches per domain; the user's
    --eval-max-batches wins, and --perturbation-batches 0 measures the whole split (None)."""
    from mixjax.methods.offline import Li2025
    from mixjax.train import TrainConfig

    config = TrainConfig(batch_size=2, seq_len=100)
    run = Li2025().propose(["a", "b"], 80_000)[0]
    assert config.steps_for(run.budget_tokens) == 100
    picked = Li2025().run_config(config, run)
    assert (picked.eval_every, picked.select_best, picked.select_max_batches, picked.eval_max_batches) == (34, True, 1, 4)
    assert Li2025().run_config(dataclasses.replace(config, eval_max_batches=8), run).eval_max_batches == 8
    assert Li2025(perturbation_batches=0).run_config(config, run).eval_max_batches is None
    final_loss = Li2025(perturbation_evals=0).run_config(config, run)
    assert dataclasses.replace(final_loss, eval_max_batches=None) == config and final_loss.eval_max_batches == 4
    assert Li2025().run_selection() == {"evaluations": 3, "val_loss": "best evaluation",
                                        "select_max_batches_default": 1, "eval_max_batches_default": 4}
    assert Li2025(perturbation_evals=0, perturbation_batches=0).run_selection() == {}
    with pytest.raises(MixjaxError, match=r"^perturbation_batches: must be a whole number >= 0"):
        Li2025(perturbation_batches=-1)
