"""mixjax.methods.adaptive_design (issue 18): the D-optimal choice against log det gains computed independently
(numpy, finite differences), the weight criterion (the weight Jacobian against the implicit function
theorem, its Sherman-Morrison reductions against recomputed traces), the start design, the stopping
rule, candidate names, the one-line errors, `mixjax next` end to end, and
experiments/adaptive_design.py --quick."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mixjax import laws
from mixjax.methods import adaptive_design as adaptive
from mixjax.cli import main
from mixjax.errors import MixjaxError
from mixjax.names import check_run_name
from mixjax.observations import Observations, write_csv
from mixjax.testing import simulate
from tests.law_fixtures import paper_like_law

BUDGET = 5e6
LAW = laws.get("li2025")


def _simulate(truth, runs, noise=1e-3, seed=0):
    tokens = np.array([[adaptive.run_tokens(r)[d] for d in truth.domains] for r in runs])
    return simulate(truth, [r.name for r in runs], tokens, noise=noise, seed=seed)


@pytest.fixture(scope="module")
def truth():
    return paper_like_law()


@pytest.fixture(scope="module")
def start_obs(truth):
    return _simulate(truth, adaptive.initial_runs(truth.domains, BUDGET))


@pytest.fixture(scope="module")
def start_fit(start_obs):
    return adaptive.assess(start_obs, LAW, BUDGET, n_boot=50)


# -- the D-optimal criterion ------------------------------------------------------------------------

def test_log_det_gain_zero_row_adds_nothing_and_an_unseen_direction_wins():
    F = np.array([np.diag([4.0, 1.0, 0.0])])  # the third parameter is not seen by any run
    assert adaptive.log_det_gain(F, np.zeros((1, 3))) == pytest.approx(0.0, abs=1e-12)
    seen = adaptive.log_det_gain(F, np.array([[10.0, 0.0, 0.0]]))  # big, but along a known direction
    unseen = adaptive.log_det_gain(F, np.array([[0.0, 0.0, 0.1]]))
    assert seen == pytest.approx(np.log(1 + 100 / 4), rel=1e-6)
    assert unseen > seen > 0


def _numpy_loss(raw, tokens, i):
    """li2025 loss of domain i, written out in numpy from the law's formula (unit 1e6 tokens)."""
    C, k, b, E = np.exp(raw[0]), np.exp(raw[1]), np.exp(raw[3]), np.exp(raw[4])
    a = 1 / (1 + np.exp(-raw[2]))
    own = tokens[i]
    m = tokens.sum() - own
    return C * (own + min(k * m**a, m)) ** (-b) + E


def _numpy_rows(raw_KxP, tokens_K, h=1e-3):
    """d loss_i / d raw_i by the 5-point central difference (error O(h^4))."""
    K, P = raw_KxP.shape
    rows = np.zeros((K, P))
    for i in range(K):
        for p in range(P):
            def f(step):
                r = raw_KxP[i].copy()
                r[p] += step
                return _numpy_loss(r, tokens_K, i)
            rows[i, p] = (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
    return rows


@pytest.mark.slow
def test_propose_next_picks_the_largest_log_det_gain_computed_independently(truth, start_obs, start_fit):
    a = start_fit
    candidates = adaptive.candidate_runs(start_obs, truth.domains, BUDGET, weights=a.weights)
    raw = adaptive.raw_params(a.fitted)
    units = lambda run: np.array([adaptive.run_tokens(run)[d] for d in truth.domains]) / 1e6  # noqa: E731
    J = np.stack([_numpy_rows(raw, units(r)) for r in adaptive.initial_runs(truth.domains, BUDGET)])  # (R, K, P)
    gains = []
    for c in candidates:
        g = _numpy_rows(raw, units(c))
        total = 0.0
        for i in range(len(truth.domains)):
            F = J[:, i].T @ J[:, i]
            total += np.linalg.slogdet(F + np.outer(g[i], g[i]))[1] - np.linalg.slogdet(F)[1]
        gains.append(total)
    gains = np.array(gains)
    np.testing.assert_allclose(adaptive.candidate_gains(a.fitted, start_obs, candidates), gains, rtol=2e-3)
    chosen = adaptive.propose_next(start_obs, LAW, BUDGET, candidates, fitted=a.fitted, criterion="d-optimal")
    assert chosen[0].name == candidates[int(np.argmax(gains))].name
    two = adaptive.propose_next(start_obs, LAW, BUDGET, candidates, n=2, fitted=a.fitted, criterion="d-optimal")
    assert two[0] == chosen[0] and two[1] != two[0]


# -- the weight criterion ---------------------------------------------------------------------------

def _ift_weight_jacobian(raw_KxP, budget_units, h=1e-4):
    """d w*/d theta_i (K, K, P) by the implicit function theorem at an interior optimum of
    f(w, theta) = sum_i L_i(w N): with Z a basis of {sum w = 0}, dw = -Z (Z^T H_ww Z)^-1 Z^T H_w,theta
    dtheta. Derivatives of f by central differences of `_numpy_loss` (numpy), the optimum by Newton
    steps on the simplex: independent of the law module and the optimiser."""
    K, P = raw_KxP.shape

    def f(w, raw):
        return sum(_numpy_loss(raw[i], w * budget_units, i) for i in range(K))

    def step(x, j, d):
        x = x.copy()
        x.flat[j] += d
        return x

    def grad(w, raw):
        return np.array([(f(step(w, a, h), raw) - f(step(w, a, -h), raw)) / (2 * h) for a in range(K)])

    def mixed(w, raw, a, j, on_raw):
        """d^2 f / dw_a dx_j, x = raw (on_raw) or w."""
        def at(da, dj):
            w2 = step(w, a, da)
            return f(w2, step(raw, j, dj)) if on_raw else f(step(w2, j, dj), raw)
        return (at(h, h) - at(h, -h) - at(-h, h) + at(-h, -h)) / (4 * h * h)

    Z = np.linalg.qr(np.column_stack([np.ones(K), np.eye(K)[:, :K - 1]]))[0][:, 1:]
    w = np.full(K, 1.0 / K)
    for _ in range(20):  # f is convex on the simplex: Newton converges
        H = np.array([[mixed(w, raw_KxP, a, b, False) for b in range(K)] for a in range(K)])
        w = w - Z @ np.linalg.solve(Z.T @ H @ Z, Z.T @ grad(w, raw_KxP))
    H = np.array([[mixed(w, raw_KxP, a, b, False) for b in range(K)] for a in range(K)])
    Hwt = np.array([[mixed(w, raw_KxP, a, j, True) for j in range(K * P)] for a in range(K)])  # (K_w, K P)
    dw = -Z @ np.linalg.solve(Z.T @ H @ Z, Z.T @ Hwt)  # (K_w, K P)
    return np.transpose(dw.reshape(K, K, P), (1, 0, 2)), w


@pytest.mark.slow
def test_weight_jacobian_matches_the_implicit_function_theorem(start_fit):
    raw = adaptive.raw_params(start_fit.fitted)
    G_ift, w_ift = _ift_weight_jacobian(raw, BUDGET / 1e6)
    np.testing.assert_allclose(w_ift, start_fit.weights, atol=1e-6)
    assert np.all(w_ift > 0.05)  # an interior optimum, where the theorem applies
    G = adaptive.weight_jacobian(start_fit.fitted, BUDGET)
    assert G.shape == (3, 3, 5) and np.abs(G).max() > 0.01
    np.testing.assert_allclose(G, G_ift, atol=2e-5 * np.abs(G_ift).max())
    np.testing.assert_allclose(G.sum(axis=1), 0.0, atol=1e-9)  # the weights stay on the simplex
    # a second step gives the same derivative
    np.testing.assert_allclose(adaptive.weight_jacobian(start_fit.fitted, BUDGET, eps=2e-4), G,
                               atol=2e-5 * np.abs(G).max())


@pytest.mark.slow
def test_weight_variance_reduction_matches_recomputed_traces(truth, start_obs, start_fit):
    rng = np.random.default_rng(0)
    K, P = 3, 5
    A = rng.standard_normal((K, P + 2, P))
    F, G, rows = np.einsum("kap,kaq->kpq", A, A), rng.standard_normal((K, K, P)), rng.standard_normal((4, K, P))
    F_after = F[None] + np.einsum("ckp,ckq->ckpq", rows, rows)
    before = adaptive.weight_variance(F, G)
    recomputed = [before - adaptive.weight_variance(F_after[c], G) for c in range(4)]
    np.testing.assert_allclose(adaptive.weight_variance_reduction(F, G, rows), recomputed, rtol=1e-8)
    assert adaptive.weight_variance_reduction(F, G, rows[0]) == pytest.approx(recomputed[0], rel=1e-8)
    # on the fit: propose_next's greedy picks are the largest recomputed reductions, one after the other
    candidates = adaptive.candidate_runs(start_obs, truth.domains, BUDGET, weights=start_fit.weights)
    F, J = adaptive._fisher_and_rows(start_fit.fitted, start_obs, candidates)
    G = adaptive.weight_jacobian(start_fit.fitted, BUDGET)
    before = adaptive.weight_variance(F, G)
    drops = np.array([before - adaptive.weight_variance(F + np.einsum("kp,kq->kpq", g, g), G) for g in J])
    gains = adaptive.candidate_weight_gains(start_fit.fitted, start_obs, candidates, BUDGET)
    np.testing.assert_allclose(gains, drops, rtol=1e-4, atol=1e-6 * before)
    first = int(np.argmax(drops))
    F1 = F + np.einsum("kp,kq->kpq", J[first], J[first])
    after = adaptive.weight_variance(F1, G)
    second = np.array([after - adaptive.weight_variance(F1 + np.einsum("kp,kq->kpq", g, g), G) for g in J])
    second[first] = -np.inf
    two = adaptive.propose_next(start_obs, LAW, BUDGET, candidates, n=2, fitted=start_fit.fitted)
    assert [r.name for r in two] == [candidates[first].name, candidates[int(np.argmax(second))].name]
    with pytest.raises(MixjaxError, match="criterion") as e:
        adaptive.propose_next(start_obs, LAW, BUDGET, candidates, fitted=start_fit.fitted, criterion="a")
    assert "\n" not in str(e.value)


# -- the start -------------------------------------------------------------------------------------

def test_initial_runs_are_few_spread_identifiable_and_stable():
    for domains in (["if", "math", "code"], [f"d{i}" for i in range(6)]):
        runs = adaptive.initial_runs(domains, BUDGET)
        assert len(runs) == LAW.n_free(len(domains)) + 1 == 6
        assert [r.name for r in runs] == [r.name for r in adaptive.initial_runs(domains, BUDGET)]
        assert len({r.name for r in runs}) == 6
        tokens = np.array([[adaptive.run_tokens(r)[d] for d in domains] for r in runs])
        adaptive.check_identifiable(Observations([r.name for r in runs], domains, tokens, np.ones(tokens.shape)), LAW)
        assert runs[0].budget_tokens == pytest.approx(1.25e6, rel=5e-3)  # the uniform base run (3 figures)
        assert len(set(runs[0].weights.values())) == 1
        assert min(min(r.weights.values()) for r in runs) > 0.005  # every domain in every run
        totals = [r.budget_tokens / 1.25e6 for r in runs]
        assert 0.49 <= min(totals) and max(totals) <= 2.01 and max(totals) / min(totals) > 1.5  # sizes spread
        for r in runs:
            check_run_name(r.name, "test")
    # the earlier design on request: base and each domain x 0.5, 2
    old = adaptive.initial_runs(["a", "b", "c"], BUDGET, factors=(0.5, 2.0))
    assert len(old) == 7 and old[0].name == "a=417k+b=417k+c=417k"


# -- stopping rule, uncertainty -------------------------------------------------------------------

def test_should_stop_rule():
    assert adaptive.should_stop([0.01, 0.019], 0.02)
    assert not adaptive.should_stop([0.01, 0.02], 0.02)  # narrower than, not equal
    assert not adaptive.should_stop({"a": 0.001, "b": 0.05})  # default tolerance 0.02
    assert adaptive.should_stop({"a": 0.001, "b": 0.015})
    assert not adaptive.should_stop([0.001, float("nan")], 0.02)
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(MixjaxError, match="tolerance") as e:
            adaptive.should_stop([0.01], bad)
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_weight_intervals_contain_the_fit_and_shrink_with_more_runs(truth, start_obs):
    from mixjax.methods.li2025_design import perturbation_runs

    a = adaptive.assess(start_obs, LAW, BUDGET, n_boot=100)
    assert np.all(a.p05 <= a.weights + 1e-9) and np.all(a.weights <= a.p95 + 1e-9)
    fixed = _simulate(truth, perturbation_runs(truth.domains, BUDGET * 0.25 / 3) * 1, seed=1)
    more = Observations(start_obs.runs + fixed.runs, truth.domains, np.vstack([start_obs.tokens, fixed.tokens]),
                        np.vstack([start_obs.losses, fixed.losses]))
    widths = adaptive.weight_uncertainty(more, LAW, BUDGET, n_boot=100)
    assert widths.shape == (3,) and np.all(widths > 0) and np.all(widths < a.widths)


# -- candidates ------------------------------------------------------------------------------------

def test_candidate_names_are_stable_unique_and_valid(truth, start_obs):
    w = {"if": 0.3, "math": 0.3, "code": 0.4}
    first = adaptive.candidate_runs(None, truth.domains, BUDGET, 0.25, weights=w)
    again = adaptive.candidate_runs(None, truth.domains, BUDGET, 0.25, weights=w)
    assert [r.name for r in first] == [r.name for r in again]
    names = [r.name for r in first]
    assert len(set(names)) == len(names) == 1 + 4 * 3 + 2 * 3 + 2 + 4 * 3  # + 4K spread-out mixtures
    for r in first:
        check_run_name(r.name, "test")
        assert sum(r.weights.values()) == pytest.approx(1.0) and isinstance(r.budget_tokens, int)
    base = first[0]
    assert base.name == "if=375k+math=375k+code=500k" and base.budget_tokens == 1_250_000
    assert "if=1.12M+math=375k+code=500k" in names  # if x3 (rounded to 3 significant figures)
    # runs already observed are not proposed again
    taken = adaptive.candidate_runs(start_obs, truth.domains, BUDGET, 0.25, weights=[1, 1, 1])
    assert not set(start_obs.runs) & {r.name for r in taken}


def test_candidates_must_cover_the_observed_domains(truth, start_obs):
    bad = adaptive.candidate_runs(None, ["if", "math"], BUDGET, weights=[0.5, 0.5])
    with pytest.raises(MixjaxError, match="lacks the observed domain") as e:
        adaptive.propose_next(start_obs, LAW, BUDGET, bad)
    assert "code" in str(e.value) and "\n" not in str(e.value)


def test_unidentifiable_runs_say_which_runs_would_identify_the_law(truth):
    n = 400e3
    # math and code never change their own tokens: the runs only scale 'if'
    tokens = np.array([[n * f, n, n] for f in (0.25, 0.5, 1, 2, 3, 4)])
    obs = simulate(truth, [f"r{i}" for i in range(6)], tokens, noise=1e-3)
    with pytest.raises(MixjaxError) as e:
        adaptive.weight_uncertainty(obs, LAW, BUDGET, n_boot=20)
    msg = str(e.value)
    assert "\n" not in msg
    assert "vary domain math's tokens" in msg and "vary domain code's tokens" in msg
    assert "vary domain if's tokens" not in msg
    cands = adaptive.candidate_runs(None, truth.domains, BUDGET, weights=[1, 1, 1])
    with pytest.raises(MixjaxError, match="vary domain math's tokens"):
        adaptive.propose_next(obs, LAW, BUDGET, cands)


# -- mixjax next ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mixjax_next_end_to_end(truth, start_obs, tmp_path, capsys):
    csv, out = tmp_path / "obs.csv", tmp_path / "runs.json"
    write_csv(start_obs, csv)
    rc = main(["next", str(csv), "--budget-tokens", "5M", "--runs", "2", "--tolerance", "0.001",
               "--samples", "50", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "stop: no" in text
    runs = json.loads(out.read_text())
    assert isinstance(runs, list) and len(runs) == 2
    for r in runs:
        assert set(r) == {"name", "weights", "budget_tokens"}
        check_run_name(r["name"], "test")
        assert set(r["weights"]) == set(truth.domains) and sum(r["weights"].values()) == pytest.approx(1.0)
        assert r["name"] not in start_obs.runs and r["name"] in text
    # the same runs give the same proposal (names are stable)
    again = tmp_path / "again.json"
    main(["next", str(csv), "--budget-tokens", "5M", "--runs", "2", "--tolerance", "0.001",
          "--samples", "50", "--out", str(again)])
    assert json.loads(again.read_text()) == runs
    capsys.readouterr()
    # a generous tolerance: stop, and nothing to train
    rc = main(["next", str(csv), "--budget-tokens", "5M", "--tolerance", "0.9", "--samples", "50",
               "--out", str(out)])
    assert rc == 0 and "stop: yes" in capsys.readouterr().out and json.loads(out.read_text()) == []
    rc = main(["next", str(csv), "--budget-tokens", "5M", "--tolerance", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--tolerance" in err and err.count("\n") == 1


@pytest.mark.slow
def test_mixjax_next_on_too_few_runs_proposes_the_runs_that_identify_the_law(truth, tmp_path, capsys):
    """Too few runs to fit is when a user asks what to train next: `next` says why there are no
    weights yet and proposes runs (from the adaptive design's start) after which the fit runs."""
    start = adaptive.initial_runs(truth.domains, BUDGET)
    first = _simulate(truth, start[:3])
    assert adaptive.identification_problems(first, LAW)
    csv, out = tmp_path / "first.csv", tmp_path / "runs.json"
    write_csv(first, csv)
    assert main(["next", str(csv), "--budget-tokens", "5M", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("law li2025 on 3 runs: not identified yet, so no optimal weights - ")
    assert "distinct run(s) for 5 free parameters" in text and "stop: no - train these" in text
    proposed = json.loads(out.read_text())
    assert proposed and all(r["name"] not in first.runs and r["name"] in text for r in proposed)
    runs = [adaptive.ProposedRun(r["name"], r["weights"], r["budget_tokens"]) for r in proposed]
    both = first.concat(_simulate(truth, runs))
    assert adaptive.identification_problems(both, LAW) == []
    # fewest: dropping any proposed run leaves the law unidentified
    for skip in range(len(runs)):
        fewer = first.concat(_simulate(truth, runs[:skip] + runs[skip + 1:])) if len(runs) > 1 else first
        assert adaptive.identification_problems(fewer, LAW), skip
    write_csv(both, csv)
    assert main(["next", str(csv), "--budget-tokens", "5M", "--tolerance", "0.9", "--samples", "20",
                 "--out", str(out)]) == 0
    assert "optimal weights at 5,000,000 tokens" in capsys.readouterr().out


# -- the experiment ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_adaptive_design_quick_runs(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
    import adaptive_design

    results = tmp_path / "results"
    assert adaptive_design.main(["--quick", "--quiet", "--results", str(results)]) == 0
    payload = json.loads((results / "adaptive_design_quick.json").read_text())
    assert "--quick" in payload["command"] and payload["rows"][0]["K"] == 3
    trial = payload["trials"][0]
    assert trial["fixed"]["runs"] == 13 and trial["adaptive"]["runs"] >= 6
    assert (results / "adaptive_design_quick.md").is_file()
    assert (results / "adaptive_design_quick_error_vs_runs.png").is_file()
