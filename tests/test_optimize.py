"""Optimal weights: agreement with scipy SLSQP, projections, bounds and caps, bad budgets."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

from mixjax import laws
from mixjax.errors import MixjaxError
from mixjax.laws import FittedLaw
from mixjax.laws.li2025 import Li2025Params
from mixjax.optimize import optimize, project_box_simplex, solve_weights
from tests.law_fixtures import paper_like_law

LI2025 = laws.get("li2025")


def li2025_objective_and_grad(w, p, N):
    """sum_i L_i(w N) and its exact gradient, in numpy (the li2025 objective is separable in w_i)."""
    w = np.asarray(w, dtype=np.float64)
    own, other = w * N, (1 - w) * N
    other = np.maximum(other, 0.0)
    power = p.k * np.power(np.maximum(other, 1e-300), p.alpha)
    capped = power >= other
    T = np.where(capped, other, power)
    dT_dw = np.where(capped, -N, -N * p.k * p.alpha * np.power(np.maximum(other, 1e-300), p.alpha - 1))
    D = own + T
    f = np.sum(p.C * D ** (-p.beta) + p.E)
    g = -p.beta * p.C * D ** (-p.beta - 1) * (N + dT_dw)
    return f, g


def slsqp_weights(p, N, lower, upper):
    K = len(lower)
    res = minimize(
        li2025_objective_and_grad,
        np.clip(np.full(K, 1.0 / K), lower, upper),
        args=(p, N),
        jac=True,
        method="SLSQP",
        bounds=list(zip(lower, upper)),
        constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return res.x


def random_li2025(rng, n, K):
    return Li2025Params(
        C=rng.uniform(0.5, 5, (n, K)),
        k=np.exp(rng.uniform(np.log(0.01), np.log(3), (n, K))),
        alpha=rng.uniform(0.0, 1.0, (n, K)),
        beta=rng.uniform(0.05, 1.0, (n, K)),
        E=rng.uniform(0.1, 2, (n, K)),
    )


def solve_batch(params, budgets, lower, upper):
    with jax.enable_x64(True):
        solve = jax.jit(jax.vmap(lambda p, N, lo, up: solve_weights(LI2025, p, N, lo, up)))
        w, losses, converged = solve(params, jnp.asarray(budgets), jnp.asarray(lower), jnp.asarray(upper))
        return np.asarray(w), np.asarray(losses), np.asarray(converged)


def compare_with_slsqp(params, budgets, lower, upper):
    """Per instance: weights within 1e-4 of SLSQP's, or (flat optimum) the same objective."""
    ours, losses, converged = solve_batch(params, budgets, lower, upper)
    assert converged.all()
    n_weight_match = 0
    for j in range(len(budgets)):
        p = Li2025Params(*(x[j] for x in params))
        ref = slsqp_weights(p, budgets[j], lower[j], upper[j])
        f_ours = li2025_objective_and_grad(ours[j], p, budgets[j])[0]
        f_ref = li2025_objective_and_grad(ref, p, budgets[j])[0]
        np.testing.assert_allclose(losses[j].sum(), f_ours, rtol=1e-12)
        assert abs(ours[j].sum() - 1) < 1e-12
        assert np.all(ours[j] >= lower[j] - 1e-12) and np.all(ours[j] <= upper[j] + 1e-12)
        assert f_ours <= f_ref + 1e-10 * abs(f_ref), (j, f_ours, f_ref)  # never worse than SLSQP
        if np.max(np.abs(ours[j] - ref)) < 1e-4:
            n_weight_match += 1
        else:  # a flat optimum: different weights, same objective
            assert abs(f_ours - f_ref) <= 1e-9 * abs(f_ref), (j, ours[j], ref, f_ours, f_ref)
    return n_weight_match


@pytest.mark.parametrize("K", [2, 3, 5])
def test_matches_slsqp_on_random_li2025_instances(K):
    """3 x 50 = 150 random instances (budgets 0.5-500 token units), solved at once under vmap."""
    rng = np.random.default_rng(K)
    n = 50
    params = random_li2025(rng, n, K)
    budgets = np.exp(rng.uniform(np.log(0.5), np.log(500), n))
    matched = compare_with_slsqp(params, budgets, np.zeros((n, K)), np.ones((n, K)))
    assert matched >= 0.9 * n


def test_matches_slsqp_with_weight_bounds():
    rng = np.random.default_rng(7)
    n, K = 40, 4
    params = random_li2025(rng, n, K)
    budgets = np.exp(rng.uniform(np.log(0.5), np.log(500), n))
    lower = rng.uniform(0, 0.15, (n, K))
    upper = rng.uniform(0.3, 0.8, (n, K))
    matched = compare_with_slsqp(params, budgets, lower, upper)
    assert matched >= 0.9 * n


def test_box_simplex_projection():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        project = jax.jit(project_box_simplex)
        for _ in range(20):
            v = jnp.asarray(rng.normal(0, 2, 6))
            got = project(v, jnp.zeros(6), jnp.ones(6))
            np.testing.assert_allclose(got, optax.projections.projection_simplex(v), atol=1e-12)
            lower, upper = jnp.asarray(rng.uniform(0, 0.1, 6)), jnp.asarray(rng.uniform(0.2, 0.5, 6))
            w = project(v, lower, upper)
            assert abs(float(w.sum()) - 1) < 1e-12
            assert np.all(w >= lower - 1e-15) and np.all(w <= upper + 1e-15)
            # projection characterisation: <v - w, z - w> <= 0 for feasible z
            z = project(jnp.asarray(rng.normal(0, 2, (6,))), lower, upper)
            assert float(jnp.dot(v - w, z - w)) <= 1e-12


def test_many_budgets_at_once_equal_one_at_a_time():
    law = paper_like_law()
    budgets = [5e6, 2e7, 2e8]
    together = optimize(law, budgets)
    for b, budget in enumerate(budgets):
        alone = optimize(law, [budget])
        np.testing.assert_allclose(alone.weights[0], together.weights[b], atol=1e-9)
    assert together.converged.all()
    # predicted losses are the law at the weights
    with jax.enable_x64(True):
        again = laws.predict(law.law, law.params, together.weights[0] * 5.0)
    np.testing.assert_allclose(together.predicted_loss[0], again, rtol=1e-12)
    assert together.to_json()["results"][0]["budget"] == 5000000


def test_bounds_and_data_cap_bind():
    law = paper_like_law()
    free = optimize(law, [2e8]).weights[0]
    capped = optimize(law, [2e8], available={"if": 2e7}, max_epochs=2)
    assert capped.weights[0, 0] == pytest.approx((4e7 - 2) / 2e8, abs=1e-12)  # 2e7 x 2 / 2e8, less 2 tokens
    assert free[0] > 0.2
    record = capped.to_json()["results"][0]
    assert record["cap_binds"] == ["if"] and record["passes"] == {"if": pytest.approx(2 - 1e-7, abs=1e-12)}
    np.testing.assert_allclose(list(record["unconstrained_weights"].values()), free, atol=1e-9)
    bounded = optimize(law, [5e6], min_weight={"math": 0.5}, max_weight={"code": 0.1})
    assert bounded.weights[0, 1] >= 0.5 - 1e-12 and bounded.weights[0, 2] <= 0.1 + 1e-12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(budgets=[0]), "budgets: must be a positive number"),
        (dict(budgets=[-5e6]), "budgets: must be a positive number"),
        (dict(budgets=[float("nan")]), "budgets: must be a positive number"),
        (dict(budgets=[1e9], available={"if": 1e6, "math": 1e6, "code": 1e6}), "budget 1e\\+09"),
        (dict(budgets=[1e6], min_weight={"web": 0.1}), "unknown domain 'web'"),
        (dict(budgets=[1e6], min_weight={"if": 0.6, "math": 0.6}), "sum to 1.2 > 1"),
        (dict(budgets=[1e6], max_weight={"if": 1.5}), "must be in \\[0, 1\\]"),
    ],
)
def test_bad_requests_give_one_line_errors(kwargs, message):
    with pytest.raises(MixjaxError, match=message) as e:
        optimize(paper_like_law(), **kwargs)
    assert "\n" not in str(e.value)


def test_lmo_laws_minimise_the_lmo_objective():
    """loglinear: SLSQP agrees; linear: the optimum is the best vertex allowed by the bounds."""
    rng = np.random.default_rng(3)
    K = 3
    for _ in range(5):
        c, b, A = rng.uniform(0.5, 2, K), rng.uniform(0.5, 2, K), rng.normal(0, 1, (K, K))
        law = FittedLaw.from_json(
            {"law": "loglinear", "domains": ["a", "b", "c"], "token_unit": 1,
             "params": {"c": c.tolist(), "b": b.tolist(), "A": A.tolist()}}
        )
        ours = optimize(law, [1e6]).weights[0]
        f = lambda p: np.sum(c + b * np.exp(-A @ p))  # noqa: E731
        ref = minimize(f, np.full(K, 1 / K), method="SLSQP", bounds=[(0, 1)] * K,
                       constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1}],
                       options={"ftol": 1e-15, "maxiter": 1000}).x
        assert f(ours) <= f(ref) + 1e-9
        assert np.max(np.abs(ours - ref)) < 1e-4 or abs(f(ours) - f(ref)) < 1e-9
    linear = FittedLaw.from_json(
        {"law": "linear", "domains": ["a", "b", "c"], "token_unit": 1,
         "params": {"c": [1, 1, 1], "b": [1, 1, 1], "A": [[0.1, 0.5, 0], [0, 0.2, 0], [0, 0, 0.3]]}}
    )
    np.testing.assert_allclose(optimize(linear, [1e6]).weights[0], [0, 1, 0], atol=1e-9)
    bounded = optimize(linear, [1e6], max_weight={"b": 0.6}).weights[0]
    np.testing.assert_allclose(bounded, [0, 0.6, 0.4], atol=1e-9)


LMO_PARAMS = {"c": [1.0, 1.2, 0.8], "b": [1.0, 0.7, 1.5], "A": [[2.0, 0.5, 0.1], [0.3, 1.5, 0.2], [0.1, 0.4, 1.0]]}


@pytest.mark.parametrize("law_name", ["li2025", "loglinear", "linear"])
def test_no_budget_asks_more_passes_than_max_epochs(law_name):
    """Over budgets from far below to far above the data: every domain's tokens stay within its
    training tokens x max_epochs (less the 2-token margin), a domain is marked where it sits at the
    cap, and the unconstrained optimum is the solve without the data."""
    law = paper_like_law() if law_name == "li2025" else FittedLaw.from_json(
        {"law": law_name, "domains": ["if", "math", "code"], "token_unit": 1, "params": LMO_PARAMS})
    available = {"if": 3e5, "math": 2e6, "code": 8e5}
    budgets = [1e5, 1e6, 3e6]  # all within the data at 1 pass (the same shapes: one compile)
    free = optimize(law, budgets).weights
    bound = 0
    for max_epochs in (1.0, 2.5, 10.0):
        result = optimize(law, budgets, available=available, max_epochs=max_epochs)
        np.testing.assert_allclose(result.unconstrained, free, atol=1e-6)
        for b, entry in enumerate(result.to_json()["results"]):
            for d in law.domains:
                assert entry["tokens"][d] <= available[d] * max_epochs - 2 + 1e-6, (law_name, max_epochs, b, d)
                assert entry["passes"][d] == pytest.approx(entry["tokens"][d] / available[d], rel=1e-12)
            at_cap = [d for d in law.domains if entry["tokens"][d] >= available[d] * max_epochs - 2 - 1e-3]
            assert entry["cap_binds"] == at_cap
            bound += bool(at_cap)
            if not at_cap:  # nothing binds: the optimum is the free one
                np.testing.assert_allclose(result.weights[b], free[b], atol=1e-6)
    assert bound >= 1  # the caps do bind somewhere
