"""Laws: registry, reparametrisation, unit changes, gradients vs finite differences, convexity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import laws
from mixjax.errors import MixjaxError
from mixjax.laws import domain_params, predict
from mixjax.laws.li2025 import Li2025Params, transferred
from mixjax.optimize import total_loss

K = 3
ALL_LAWS = laws.names()


def random_params(law, rng, K=K):
    """Random valid parameters of any law, as float64 numpy fields."""
    if law.name == "li2025":
        return Li2025Params(
            C=rng.uniform(0.5, 5, K),
            k=rng.uniform(0.05, 2, K),
            alpha=rng.uniform(0.05, 0.95, K),
            beta=rng.uniform(0.05, 1.0, K),
            E=rng.uniform(0.1, 2, K),
        )
    if law.name == "li2025-repeat":
        return law.params_type(
            C=rng.uniform(0.5, 5, K),
            k=rng.uniform(0.05, 2, K),
            alpha=rng.uniform(0.05, 0.95, K),
            beta=rng.uniform(0.05, 1.0, K),
            E=rng.uniform(0.1, 2, K),
            R_star=rng.uniform(0.5, 30, K),
            unique=np.exp(rng.uniform(np.log(0.01), np.log(3), K)),
        )
    if law.name == "li2025-pairwise":
        return law.params_type(
            C=rng.uniform(0.5, 5, K),
            k=rng.uniform(0.05, 2, (K, K)),
            alpha=rng.uniform(0.05, 0.95, (K, K)),
            beta=rng.uniform(0.05, 1.0, K),
            E=rng.uniform(0.1, 2, K),
        )
    return law.params_type(c=rng.uniform(0.5, 2, K), b=rng.uniform(0.5, 2, K), A=rng.normal(0, 1, (K, K)))


def test_registry_knows_every_law_and_rejects_unknown_names():
    assert set(ALL_LAWS) == {"li2025", "li2025-pairwise", "li2025-repeat", "loglinear", "linear"}
    for name in ALL_LAWS:
        assert laws.get(name).name == name
    with pytest.raises(MixjaxError, match="unknown law 'chinchilla'") as e:
        laws.get("chinchilla")
    assert "\n" not in str(e.value)


def test_li2025_matches_the_paper_formula():
    p = Li2025Params(*(np.array(v) for v in ([3.0, 2.0], [0.5, 0.2], [0.5, 0.7], [0.3, 0.4], [1.0, 0.8])))
    n = np.array([2.0, 5.0])
    with jax.enable_x64(True):
        got = np.asarray(predict(laws.get("li2025"), p, jnp.asarray(n)))
    want = [3.0 * (2.0 + 0.5 * 5.0**0.5) ** -0.3 + 1.0, 2.0 * (5.0 + 0.2 * 2.0**0.7) ** -0.4 + 0.8]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_transfer_never_exceeds_the_real_data_and_is_nan_free_at_zero():
    with jax.enable_x64(True):
        m = jnp.array([0.0, 1e-3, 0.5, 4.0])
        t = transferred(5.0, 0.5, m)
        assert np.all(np.asarray(t) <= np.asarray(m) + 1e-15)
        np.testing.assert_allclose(t[-1], min(5.0 * 2.0, 4.0))
        g = jax.grad(lambda m: jnp.sum(transferred(0.5, 0.5, m)))(m)
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name", ALL_LAWS)
def test_pack_unpack_round_trip(name):
    law = laws.get(name)
    if law.bind is not None:  # the law the fit moves, its fixed fields set
        law = law.bind({"unique": np.array([0.5, 1.0, 2.0])}, 1.0)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        raw = jnp.asarray(rng.normal(0, 0.5, (K, law.n_free(K))))
        for i in range(K):
            p_i = law.unpack(raw[i], K, i)
            np.testing.assert_allclose(law.pack(p_i, K, i), raw[i], atol=1e-9)


@pytest.mark.parametrize("name", ALL_LAWS)
def test_rescale_keeps_predictions(name):
    law = laws.get(name)
    rng = np.random.default_rng(1)
    p = random_params(law, rng)
    tokens = rng.uniform(0.1, 3, K)
    with jax.enable_x64(True):
        before = predict(law, p, jnp.asarray(tokens))
        after = predict(law, law.rescale(p, 7.5), jnp.asarray(tokens * 7.5))
        np.testing.assert_allclose(after, before, rtol=1e-10)


@pytest.mark.parametrize("name", ALL_LAWS)
def test_gradients_match_finite_differences(name):
    """d(sum_i w_i L_i)/d(params, tokens) by autodiff vs central differences (float64)."""
    law = laws.get(name)
    rng = np.random.default_rng(2)
    p = random_params(law, rng)
    tokens = rng.uniform(0.2, 3, K)
    mix = rng.uniform(0.5, 1.5, K)
    with jax.enable_x64(True):

        def f(p, t):
            return jnp.dot(jnp.asarray(mix), predict(law, p, t))

        gp, gt = jax.grad(f, argnums=(0, 1))(jax.tree.map(jnp.asarray, p), jnp.asarray(tokens))
        h = 1e-6
        for field, grad in zip(p._fields, gp):
            value = np.asarray(getattr(p, field))
            for idx in np.ndindex(value.shape):
                up, down = value.copy(), value.copy()
                up[idx] += h
                down[idx] -= h
                fd = (f(p._replace(**{field: up}), tokens) - f(p._replace(**{field: down}), tokens)) / (2 * h)
                np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-8, err_msg=f"{field}{idx}")
        for j in range(K):
            e = np.zeros(K)
            e[j] = h
            fd = (f(p, tokens + e) - f(p, tokens - e)) / (2 * h)
            np.testing.assert_allclose(gt[j], fd, rtol=1e-5, atol=1e-8, err_msg=f"tokens[{j}]")


def test_domain_params_slices_every_field():
    p = random_params(laws.get("li2025-pairwise"), np.random.default_rng(3))
    p1 = domain_params(p, 1)
    assert p1.k.shape == (K,) and np.ndim(p1.C) == 0


@pytest.mark.parametrize("name", ["li2025", "li2025-pairwise", "li2025-repeat"])
def test_objective_is_convex_on_the_simplex(name):
    """Random instances and budgets: midpoint convexity on random chords, and a PSD Hessian
    restricted to the simplex's tangent space (sum of directions = 0) at random points."""
    law = laws.get(name)
    rng = np.random.default_rng(4)
    n_instances, n_points, Kc = 200, 16, 4
    params = [random_params(law, rng, Kc) for _ in range(n_instances)]
    params = jax.tree.map(lambda *xs: np.stack(xs), *params)
    budgets = np.exp(rng.uniform(np.log(0.1), np.log(1e3), n_instances))
    a = rng.dirichlet(np.ones(Kc) * 0.7, (n_instances, n_points))
    b = rng.dirichlet(np.ones(Kc) * 0.7, (n_instances, n_points))
    basis = np.linalg.qr(np.vstack([np.ones(Kc), np.eye(Kc)[:-1]]).T)[0][:, 1:]  # tangent basis
    with jax.enable_x64(True):

        def check(p, N, a_S, b_S):
            f = lambda w: total_loss(law, p, w, N)  # noqa: E731
            mid = jax.vmap(f)(0.5 * (a_S + b_S))
            chord = 0.5 * (jax.vmap(f)(a_S) + jax.vmap(f)(b_S))
            hess = jax.vmap(jax.hessian(f))(a_S)
            tangent = jnp.einsum("ka,skl,lb->sab", basis, hess, basis)
            return mid - chord, jnp.linalg.eigvalsh(tangent).min(axis=-1), jnp.abs(chord)

        gap, min_eig, scale = jax.jit(jax.vmap(check))(params, budgets, a, b)
    gap, min_eig, scale = map(np.asarray, (gap, min_eig, scale))
    assert np.all(gap <= 1e-10 * scale), gap.max()
    # the min() transfer cap has a kink where its Hessian is not defined; away from it, PSD
    finite = np.isfinite(min_eig)
    assert finite.mean() > 0.95
    assert np.all(min_eig[finite] >= -1e-8 * scale.mean()), min_eig[finite].min()


def test_li2025_repeat_matches_muennighoff_effective_data():
    """Below one pass the law is li2025; beyond it the own tokens count as Muennighoff et al.'s
    D' = U + U R* (1 - exp(-R / R*)), R = n / U - 1 repetitions; transfer uses the raw tokens."""
    from mixjax.laws.li2025_repeat import Li2025RepeatParams

    C, k, alpha, beta, E, r_star, U = 3.0, 0.5, 0.5, 0.3, 1.0, 4.0, 2.0
    p = Li2025RepeatParams(*(np.array([v, v]) for v in (C, k, alpha, beta, E, r_star, U)))
    law = laws.get("li2025-repeat")
    for own, other in ((1.5, 5.0), (2.0, 5.0), (9.0, 5.0), (500.0, 0.5)):
        with jax.enable_x64(True):
            got = float(predict(law, p, jnp.array([own, other]))[0])
        R = own / U - 1
        D = own if R <= 0 else U + U * r_star * (1 - np.exp(-R / r_star))
        want = C * (D + min(k * other**alpha, other)) ** -beta + E
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # saturation: infinitely many passes are worth U (1 + R*)
    with jax.enable_x64(True):
        far = float(predict(law, p, jnp.array([1e12, 0.0]))[0])
    np.testing.assert_allclose(far, C * (U * (1 + r_star)) ** -beta + E, rtol=1e-9)


def test_li2025_repeat_law_file_round_trip_and_needs_unique_tokens_to_fit():
    from mixjax.laws import FittedLaw
    from mixjax.observations import Observations
    from mixjax.fit import fit

    obj = {"law": "li2025-repeat", "domains": ["a", "b"], "token_unit": 1e6,
           "params": {"C": [3, 2], "k": [0.5, 0.2], "alpha": [0.5, 0.7], "beta": [0.3, 0.4],
                      "E": [1, 0.8], "R_star": [15, 15], "unique": [0.25, 4.0]}}
    fitted = FittedLaw.from_json(obj)
    assert FittedLaw.from_json(fitted.to_json()).params.unique.tolist() == [0.25, 4.0]
    bad = {**obj, "params": {**obj["params"], "unique": [0.0, 4.0]}}
    with pytest.raises(MixjaxError, match=r"params.unique must be > 0"):
        FittedLaw.from_json(bad)
    no_unique = {**obj, "params": {f: v for f, v in obj["params"].items() if f != "unique"}}
    with pytest.raises(MixjaxError, match="need field 'unique'"):
        FittedLaw.from_json(no_unique)
    obs = Observations([f"r{i}" for i in range(8)], ["a", "b"], np.arange(1, 17).reshape(8, 2) * 1e5,
                       np.full((8, 2), 2.0))
    with pytest.raises(MixjaxError, match=r"^law li2025-repeat needs each domain's unique training tokens"):
        fit(laws.get("li2025-repeat"), obs)
    with pytest.raises(MixjaxError, match=r"^fixed: unique has no value for domain\(s\) b"):
        fit(laws.get("li2025-repeat"), obs, fixed={"unique": {"a": 1e6}})
    with pytest.raises(MixjaxError, match="law li2025 fits all its fields; it takes no unique"):
        fit(laws.get("li2025"), obs, fixed={"unique": {"a": 1e6, "b": 1e6}})
