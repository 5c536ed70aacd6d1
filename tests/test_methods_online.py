"""Online update rules against hand-computed two-domain examples, and Aioli's LearnParams in a
simulated environment whose losses follow a linear dynamic law."""

import json

import numpy as np
import pytest

from mixjax.errors import MixjaxError
from mixjax.methods.aioli import Aioli, AioliConfig
from mixjax.methods.eg import eg_update
from mixjax.methods.online_rules import (
    doge_update, doremi_update, normalise_interactions, skillit_graph, skillit_weights,
    smoothed_one_hot, solve_interaction_matrix)


def test_eg_update_two_domains_by_hand():
    # p = (0.5, 0.5), signal (1, 0), eta 0.5: p1 = e^0.5 / (e^0.5 + 1)
    p = eg_update([0.5, 0.5], [1.0, 0.0], eta=0.5)
    assert p[0] == pytest.approx(np.e ** 0.5 / (np.e ** 0.5 + 1), abs=1e-15)
    assert p.sum() == pytest.approx(1.0)
    # smoothing mixes in the uniform distribution; huge signals do not overflow
    assert eg_update([0.5, 0.5], [1e6, 0.0], eta=1.0, smoothing=1e-3)[1] == pytest.approx(5e-4)


def test_smoothed_one_hot_and_solve():
    p = smoothed_one_hot(3, 0.5)
    np.testing.assert_allclose(p, [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    a = np.array([[0.3, 0.1], [0.05, 0.2]])
    mixtures = smoothed_one_hot(2, 0.625)                     # rows (0.625, 0.375), (0.375, 0.625)
    drops = a @ mixtures.T                                    # beta_ij = sum_k A_ik P_jk
    # by hand: drop of loss 0 at mixture 0 = 0.3 * 0.625 + 0.1 * 0.375 = 0.225
    assert drops[0, 0] == pytest.approx(0.225)
    np.testing.assert_allclose(solve_interaction_matrix(drops, mixtures), a, atol=1e-12)
    np.testing.assert_allclose(solve_interaction_matrix(drops, mixtures, diagonal=True),
                               np.diag([0.225 / 0.625, drops[1, 1] / 0.625]))


def test_normalise_interactions_by_hand():
    np.testing.assert_allclose(normalise_interactions(np.array([[0.2, -0.1], [0.0, 0.3]])),
                               np.array([[0.3, 0.0], [0.1, 0.4]]) / 0.8)


def test_skillit_by_hand():
    # losses 2.0 and 1.0; training on domain 0 alone drops them to 1.5, 0.9; on domain 1: 1.9, 0.5
    a = skillit_graph([2.0, 1.0], [[1.5, 0.9], [1.9, 0.5]])
    np.testing.assert_allclose(a, [[0.25, 0.05], [0.1, 0.5]])
    # weights: exp(eta * sum_i A_ij L_i) with L = (2, 1), eta = 1: signals 0.6 and 0.6 -> equal
    np.testing.assert_allclose(skillit_weights(a, [2.0, 1.0], eta=1.0), [0.5, 0.5])
    w = skillit_weights(a, [1.0, 2.0], eta=1.0)               # signals 0.45, 1.05
    assert w[1] / w[0] == pytest.approx(np.exp(0.6))


def test_doremi_by_hand():
    # excess losses (0.4, 0 after clipping), eta 1, smoothing 1e-3
    w = doremi_update([0.5, 0.5], proxy_loss=[2.4, 1.0], reference_loss=[2.0, 1.2], eta=1.0)
    raw0 = np.exp(0.4) / (np.exp(0.4) + 1)
    np.testing.assert_allclose(w, [(1 - 1e-3) * raw0 + 5e-4, (1 - 1e-3) * (1 - raw0) + 5e-4])


def test_doge_by_hand():
    alignment = np.array([[0.2, -0.1], [0.1, 0.3]])           # column sums 0.3, 0.2
    w = doge_update([0.5, 0.5], alignment, eta=2.0)
    assert w[0] / w[1] == pytest.approx(np.exp(0.2))


def _simulate(method, a_true, steps, loss0, noise=0.0, seed=0, start=0, final_loss=None):
    """Losses follow L_{t+1} = L_t - A p_t (+ noise); returns the weights used at every step."""
    rng = np.random.default_rng(seed)
    loss = np.array(loss0, np.float64)
    used = []
    if start == 0 and method.eval_due(0):
        method.observe_eval(0, loss)
    for step in range(start, steps):
        w = method.weights(step)
        used.append(w)
        loss = loss - a_true @ w + noise * rng.standard_normal(len(loss))
        if method.eval_due(step + 1):
            method.observe_eval(step + 1, loss)
    if final_loss is not None:
        final_loss[:] = loss
    return np.array(used)


def test_learn_params_recovers_a_known_interaction_matrix():
    a_true = np.array([[0.020, 0.004, 0.001], [0.002, 0.010, 0.0], [0.005, 0.003, 0.015]])
    method = Aioli(AioliConfig(lp_rounds=2, lp_steps=3, one_hot_factor=0.5, update_steps=40, eta=0.1))
    method.begin(["a", "b", "c"], num_steps=120)
    used = _simulate(method, a_true, 120, loss0=[3.0, 3.0, 3.0])
    assert len(method.state["raw_a"]) == 3                    # one LearnParams per round
    for raw in method.state["raw_a"]:
        np.testing.assert_allclose(raw, 3 * a_true, atol=1e-12)  # drops over 3-step intervals
    # the intervals trained on exactly the smoothed one-hot mixtures, each once per sweep
    lp = used[:18]
    assert sorted(map(tuple, lp[::3])) == sorted(map(tuple, np.repeat(smoothed_one_hot(3, 0.5), 2, 0)))
    # EG moved weight towards the domains whose training lowers total loss most (column sums)
    benefit = a_true.sum(axis=0)
    final = np.asarray(method.state["weights"])
    assert np.argmax(final) == np.argmax(benefit) and np.argmin(final) == np.argmin(benefit)
    a_norm = normalise_interactions(3 * a_true)
    w1 = eg_update(np.full(3, 1 / 3), a_norm.sum(axis=0), 0.1)
    np.testing.assert_allclose(method.state["trajectory"][1][1], w1, atol=1e-12)
    np.testing.assert_allclose(used[18:40], np.tile(w1, (22, 1)))


def test_learn_params_with_noise_still_ranks_domains():
    a_true = np.array([[0.02, 0.002], [0.001, 0.008]])
    method = Aioli(AioliConfig(lp_rounds=4, lp_steps=4, one_hot_factor=0.625, update_steps=100, eta=0.2))
    method.begin(["a", "b"], num_steps=300)
    _simulate(method, a_true, 300, loss0=[3.0, 3.0], noise=0.002)
    assert all(np.asarray(a).sum(axis=0).argmax() == 0 for a in method.state["a"])


def test_aioli_state_resumes_exactly():
    a_true = np.array([[0.02, 0.004], [0.002, 0.01]])
    cfg = AioliConfig.released(2, lp_rounds=2, lp_steps=2, update_steps=20, prior_weights=[0.7, 0.3],
                               prior_steps=10)
    straight = Aioli(cfg)
    straight.begin(["a", "b"], 70)
    full = _simulate(straight, a_true, 70, [3.0, 3.0])
    first = Aioli(cfg)
    first.begin(["a", "b"], 70)
    loss_at_35 = np.zeros(2)
    _simulate(first, a_true, 35, [3.0, 3.0], final_loss=loss_at_35)
    resumed = Aioli(cfg)
    resumed.begin(["a", "b"], 70)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    np.testing.assert_allclose(_simulate(resumed, a_true, 70, loss_at_35, start=35), full[35:])
    assert len(resumed.state["trajectory"]) == len(straight.state["trajectory"]) == 4
    np.testing.assert_allclose(full[:10], np.tile([0.7, 0.3], (10, 1)))   # restricted: prior first


def test_aioli_bad_settings():
    with pytest.raises(MixjaxError, match="must exceed LearnParams' lp_rounds x K x lp_steps = 48"):
        Aioli(AioliConfig(lp_rounds=4, lp_steps=4, update_steps=40)).begin(["a", "b", "c"], 100)
    with pytest.raises(MixjaxError, match="at least 2 domains"):
        Aioli().begin(["a"], 100)
    with pytest.raises(MixjaxError, match="--prior-weights must be 2"):
        Aioli(AioliConfig.released(2, prior_weights=[0.5, 0.2], prior_steps=5)).begin(["a", "b"], 100)
    with pytest.raises(MixjaxError, match="not 1/K"):
        Aioli(AioliConfig(one_hot_factor=0.5)).begin(["a", "b"], 1000)
    assert AioliConfig.released(7).lp_steps == 10 and AioliConfig.released(2).one_hot_factor == 0.625


class _FakeSampler:
    def __init__(self, k):
        self.weights = np.full(k, 1.0 / k)

    def set_weights(self, w):
        assert abs(np.sum(w) - 1) < 1e-9
        self.weights = np.asarray(w)


def test_online_callback_drives_the_sampler_like_the_simulation():
    """The trainer-callback adapter gives the sampler exactly the weights the method chooses."""
    from types import SimpleNamespace

    from mixjax.methods.online_callback import OnlineMethodCallback

    a_true = np.array([[0.02, 0.004], [0.002, 0.01]])
    cfg = AioliConfig.released(2, lp_rounds=2, lp_steps=2, update_steps=20)
    expected = _simulate(_begun(Aioli(cfg), 60), a_true, 60, [3.0, 3.0])

    loss = np.array([3.0, 3.0])
    ctx = SimpleNamespace(domains=["a", "b"], num_steps=60, sampler=_FakeSampler(2),
                          evaluate=lambda max_batches=None: dict(zip(["a", "b"], loss)))
    callback = OnlineMethodCallback(Aioli(cfg))
    callback.on_train_start(ctx)
    used = []
    for step in range(60):
        used.append(ctx.sampler.weights)
        loss = loss - a_true @ ctx.sampler.weights
        callback.on_step(ctx, SimpleNamespace(step=step + 1, train_loss={"a": 0.0, "b": 0.0}))
    np.testing.assert_allclose(used, expected)
    assert callback.evaluations == 3 * (1 + 4)                 # per round: before LP + 4 intervals
    restored = OnlineMethodCallback(Aioli(cfg))
    restored.load_state_dict(json.loads(json.dumps(callback.state_dict())))
    assert restored.method.state == callback.method.state and restored.trajectory == callback.trajectory


def _begun(method, steps):
    method.begin(["a", "b"], steps)
    return method


def test_an_undefined_validation_loss_stops_an_online_method_with_one_line():
    from types import SimpleNamespace

    from mixjax.methods.online_callback import OnlineMethodCallback

    ctx = SimpleNamespace(domains=["a", "code"], num_steps=100,
                          evaluate=lambda max_batches: {"a": 2.0, "code": float("nan")})
    callback = OnlineMethodCallback(Aioli(AioliConfig.released(2, update_steps=50)), eval_max_batches=1)
    with pytest.raises(MixjaxError, match=r"^validation loss of code is undefined: the 1 validation batch\(es\)"):
        callback.on_train_start(ctx)
