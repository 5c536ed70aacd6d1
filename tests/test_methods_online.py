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
from mixjax.methods.skillit import SkillIt


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


# -- Skill-It's online rule against the release (HazyResearch/aioli, trainer/skillit_trainer.py) ---
SKILLIT_BEFORE = np.array([3.0, 2.5, 2.0])                 # losses of the initial model
SKILLIT_AFTER = np.array([[2.0, 2.3, 1.9],                 # row j: after training on domain j alone
                          [2.8, 1.5, 1.7],
                          [2.9, 2.4, 1.2]])


def _skillit_loss(step):
    """Scripted validation losses, different at every step (so a wrong window shows)."""
    return SKILLIT_BEFORE - 0.02 * step * np.array([1.0, 0.3, 0.6]) + 0.1 * np.sin([step, 2 * step, 3 * step])


def _skillit(num_steps=40, **options):
    method = SkillIt(**options)
    method.loss_before, method.loss_after = SKILLIT_BEFORE, SKILLIT_AFTER
    method.begin(list("abc"), num_steps)
    return method


def _drive_skillit(method, start, end):
    """The callback's order of calls (online_callback.py): weights for the batch of `step`, then
    observe_train(step), then observe_eval(step + 1) if due. Returns the weights of every batch."""
    if start == 0 and method.eval_due(0):
        method.observe_eval(0, _skillit_loss(0))
    used = []
    for step in range(start, end):
        used.append(method.weights(step))
        method.observe_train(step, np.zeros(3))
        if method.eval_due(step + 1):
            method.observe_eval(step + 1, _skillit_loss(step + 1))
    return used


def test_skillit_first_weights_are_the_releases_exp_eta_column_sums():
    # the release starts from exp(eta * graph . 1); its graph is our A transposed: p_j ~ exp(eta sum_i A_ij)
    a = skillit_graph([2.0, 1.0], [[1.5, 0.9], [1.9, 0.5]])   # [[0.25, 0.05], [0.1, 0.5]], column sums 0.35, 0.55
    method = SkillIt()
    method.loss_before, method.loss_after = np.array([2.0, 1.0]), np.array([[1.5, 0.9], [1.9, 0.5]])
    method.begin(["a", "b"], 5000)
    e = np.exp(0.2 * 0.2)                                       # eta (0.55 - 0.35)
    np.testing.assert_allclose(method.weights(0), [1 / (1 + e), e / (1 + e)], rtol=1e-12)
    np.testing.assert_allclose(method.weights(0), skillit_weights(a, np.ones(2), 0.2), rtol=1e-12)
    a3 = skillit_graph(SKILLIT_BEFORE, SKILLIT_AFTER)
    w = np.exp(0.2 * a3.sum(axis=0))
    np.testing.assert_allclose(_skillit().weights(0), w / w.sum(), rtol=1e-12)


def test_skillit_released_defaults():
    method = _skillit(5000)                                    # the released 2/3-domain scripts
    assert (method.eta, method.window, method.every, method.eval_every) == (0.2, 3, 500, 250)
    assert [s for s in range(5001) if method.eval_due(s)] == list(range(0, 4500, 250))  # none after the last update
    seven = SkillIt()
    seven.begin(list("abcdefg"), 40_000)                       # the released 7-domain script
    assert (seven.every, seven.eval_every) == (400, 2000)


def test_skillit_evaluates_and_updates_on_the_released_cadence():
    """40 steps, 8 evaluations (every 5 steps), an update every 10: the update at step u uses the
    sum of the last 3 evaluations taken at steps < u."""
    method = _skillit(40, evaluations=8, update_steps=10)
    used = _drive_skillit(method, 0, 40)
    a = skillit_graph(SKILLIT_BEFORE, SKILLIT_AFTER)
    assert method.state["loss_steps"] == [0, 5, 10, 15, 20, 25]  # 30 and 35 would feed no update
    np.testing.assert_allclose(method.state["losses"], [_skillit_loss(s) for s in range(0, 30, 5)], rtol=0)
    assert [s for s, _ in method.state["trajectory"]] == [0, 10, 20, 30]
    for step in range(40):
        u = step // 10 * 10
        if u == 0:
            signal = a.sum(axis=0)                             # the first weights: L = 1
        else:
            evals = [e for e in range(0, 40, 5) if e < u][-3:]  # e.g. step 20: evaluations 5, 10, 15
            signal = a.T @ np.sum([_skillit_loss(e) for e in evals], axis=0)
        expected = np.exp(0.2 * signal)
        np.testing.assert_allclose(used[step], expected / expected.sum(), rtol=1e-12, err_msg=f"step {step}")
    # by hand at step 20: exp(0.2 * A^T (L5 + L10 + L15)), normalised
    summed = _skillit_loss(5) + _skillit_loss(10) + _skillit_loss(15)
    w = np.exp(0.2 * a.T @ summed)
    np.testing.assert_allclose(used[20], w / w.sum(), rtol=1e-12)


def _release_skillit(graph, total_steps, num_ckpts, update_steps, window, eta):
    """The weights of every batch as trainer/skillit_trainer.py computes them (its loop written out,
    graph in its orientation); its evaluation at `counter` gets the scripted loss of that step."""
    ckpt_steps = int(total_steps / num_ckpts)
    ones = np.ones(graph.shape[0])
    weights = ones * np.exp(eta * graph.dot(ones))
    all_losses, used, counter = [], [], 0
    while True:
        for _ in range(update_steps):
            used.append(weights / weights.sum())
            if counter % ckpt_steps == 0:
                all_losses.append(_skillit_loss(counter))
            counter += 1
        if counter == total_steps:
            break
        idx = len(all_losses)
        loss_arr = np.array(all_losses[max(0, idx - window):idx]).sum(axis=0)
        weights = ones * np.exp(eta * graph.dot(loss_arr))
    return used


def test_skillit_through_the_callback_matches_the_released_loop():
    from types import SimpleNamespace

    from mixjax.methods.online_callback import OnlineMethodCallback

    for num_steps, evaluations, update_steps in [(60, 20, 10), (48, 6, 8), (30, 3, 10)]:
        now = {"step": 0}
        ctx = SimpleNamespace(domains=list("abc"), num_steps=num_steps, sampler=_FakeSampler(3),
                              evaluate=lambda max_batches=None: dict(zip("abc", _skillit_loss(now["step"]))))
        method = SkillIt(evaluations=evaluations, update_steps=update_steps)
        method.loss_before, method.loss_after = SKILLIT_BEFORE, SKILLIT_AFTER
        callback = OnlineMethodCallback(method)
        callback.on_train_start(ctx)
        used = []
        for step in range(num_steps):
            used.append(ctx.sampler.weights)
            now["step"] = step + 1
            callback.on_step(ctx, SimpleNamespace(steps_done=step + 1, train_loss=dict.fromkeys("abc", 0.0)))
        graph = skillit_graph(SKILLIT_BEFORE, SKILLIT_AFTER).T
        np.testing.assert_allclose(used, _release_skillit(graph, num_steps, evaluations, update_steps, 3, 0.2),
                                   rtol=1e-12, err_msg=f"{num_steps} steps")


def test_skillit_state_resumes_exactly():
    whole = _skillit(40, evaluations=8, update_steps=10)
    used = _drive_skillit(whole, 0, 40)
    first = _skillit(40, evaluations=8, update_steps=10)
    head = _drive_skillit(first, 0, 17)                       # killed mid-round (evaluations at 0-15)
    resumed = SkillIt(evaluations=8, update_steps=10)          # a new process: no losses in memory
    resumed.begin(list("abc"), 40)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = _drive_skillit(resumed, 17, 40)
    np.testing.assert_array_equal(np.array(head + tail), np.array(used))
    assert resumed.state_dict() == json.loads(json.dumps(whole.state_dict()))


def test_skillit_earlier_cadence_evaluates_at_each_update():
    """evaluations=None: evaluate at step 0 and at each update, the weights from the sum of the last 3
    of those evaluations, the update's own one included (mixjax's rule before the release's)."""
    method = _skillit(40, evaluations=None, update_steps=10)
    used = _drive_skillit(method, 0, 40)
    a = skillit_graph(SKILLIT_BEFORE, SKILLIT_AFTER)
    assert method.state["loss_steps"] == [0, 10, 20, 30]
    for step in (0, 9, 10, 25, 39):
        u = step // 10 * 10
        evals = [e for e in (0, 10, 20, 30) if e <= u][-3:]
        w = np.exp(0.2 * a.T @ np.sum([_skillit_loss(e) for e in evals], axis=0))
        np.testing.assert_allclose(used[step], w / w.sum(), rtol=1e-12)


def test_skillit_bad_settings():
    for options, message in [({"evaluations": 0}, "evaluations 0: must be a positive integer"),
                             ({"evaluations": 2.5}, "evaluations 2.5: must be a positive integer"),
                             ({"update_steps": 0}, "update_steps 0: must be a positive integer"),
                             ({"window": 0}, "window 0: must be a positive integer")]:
        with pytest.raises(MixjaxError, match=f"^{message}$"):
            SkillIt(**options)


def test_doremi_by_hand():
    # excess losses (0.4, 0 after clipping), eta 1, smoothing 1e-3
    w = doremi_update([0.5, 0.5], proxy_loss=[2.4, 1.0], reference_loss=[2.0, 1.2], eta=1.0)
    raw0 = np.exp(0.4) / (np.exp(0.4) + 1)
    np.testing.assert_allclose(w, [(1 - 1e-3) * raw0 + 5e-4, (1 - 1e-3) * (1 - raw0) + 5e-4])


def test_doge_by_hand():
    w = doge_update([0.5, 0.5], [0.3, 0.2], eta=2.0)          # log w += scores / mu, mu = 1 / eta
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
    with pytest.raises(MixjaxError, match="prior_weights must be 2"):
        Aioli(AioliConfig.released(2, prior_weights=[0.5, 0.2], prior_steps=5)).begin(["a", "b"], 100)
    with pytest.raises(MixjaxError, match="not 1/K"):
        Aioli(AioliConfig(one_hot_factor=0.5)).begin(["a", "b"], 1000)
    with pytest.raises(MixjaxError, match=r"^cumulative accumulates each round's A; it takes no ema$"):
        Aioli(AioliConfig.released(3, cumulative=True, ema=0.1)).begin(["a", "b", "c"], 1000)
    with pytest.raises(MixjaxError, match=r"^ema 1.0: must be in \[0, 1\)"):
        Aioli(AioliConfig.released(3, ema=1.0)).begin(["a", "b", "c"], 1000)
    with pytest.raises(MixjaxError, match="dynamic_start 'first': must be uniform or prior"):
        Aioli(AioliConfig.released(3, dynamic_start="first")).begin(["a", "b", "c"], 1000)
    assert AioliConfig.released(7).lp_steps == 10 and AioliConfig.released(2).one_hot_factor == 0.625


def _release_aioli_weights(drops_per_round, k, factor, eta, ema, prior=None):
    """Aioli's weights after each round as the released trainer computes them (HazyResearch/aioli,
    trainer/aioli_trainer.py), written out independently: solve each row against the smoothed
    one-hot mixtures, shift and scale A, then with --ema recompute from uniform (ones) as
    exp(eta * colsum(EMA)), without it multiply the previous weights (from ones in round 0; the
    release resets to ones after the prior phase)."""
    weight_matrix = np.full((k, k), (1 - factor) / (k - 1))
    np.fill_diagonal(weight_matrix, factor)
    ones = np.ones(k)
    weights, ema_graph, out = ones, None, []
    for i, beta in enumerate(drops_per_round):
        graph = np.array([np.linalg.solve(weight_matrix, row) for row in beta])
        if graph.min() < 0:
            graph = graph - graph.min()
        graph = graph / graph.sum()
        if ema is not None:
            ema_graph = graph if i == 0 else (1 - ema) * graph + ema * ema_graph
            weights = ones * np.exp(eta * ema_graph.sum(axis=0))
        else:
            weights = (ones if i == 0 else weights) * np.exp(eta * graph.sum(axis=0))
        out.append(weights / weights.sum())
    return out


def _aioli_rounds(cfg, drops_per_round, k=3):
    method = Aioli(cfg)
    method.begin(list("abc")[:k], num_steps=10_000)
    for r, drops in enumerate(drops_per_round):
        method._update(r, np.asarray(drops))
    return [np.asarray(w) for _, w in method.state["trajectory"][1:]]


def test_aioli_weights_follow_the_released_ema_rule():
    """Released 3-domain settings (eta 0.1, EMA 0.5): after four rounds of changing loss drops the
    weights equal the release's exp(eta * colsum(EMA(A))) from uniform, not accumulated EG steps."""
    rng = np.random.default_rng(3)
    drops = [rng.uniform(-0.01, 0.05, (3, 3)) for _ in range(4)]
    cfg = AioliConfig.released(3)
    assert (cfg.eta, cfg.ema, cfg.one_hot_factor, cfg.cumulative) == (0.1, 0.5, 0.5, False)
    expected = _release_aioli_weights(drops, 3, 0.5, 0.1, 0.5)
    np.testing.assert_allclose(_aioli_rounds(cfg, drops), expected, rtol=1e-12)
    # the cumulative variant is the release without --ema
    cumulative = AioliConfig.released(3, cumulative=True)
    assert cumulative.ema is None
    np.testing.assert_allclose(_aioli_rounds(cumulative, drops), _release_aioli_weights(drops, 3, 0.5, 0.1, None),
                               rtol=1e-12)


def test_aioli_released_ema_keeps_a_persistent_preference_within_e_to_the_eta():
    """Under the same A for 20 rounds the released rule stays at one EG step from uniform; the
    cumulative one keeps moving (20 steps)."""
    beta = np.array([[0.03, 0.01, 0.0], [0.01, 0.02, 0.0], [0.0, 0.0, 0.01]])
    ema = _aioli_rounds(AioliConfig.released(3), [beta] * 20)[-1]
    cumulative = _aioli_rounds(AioliConfig.released(3, cumulative=True), [beta] * 20)[-1]
    colsum = normalise_interactions(solve_interaction_matrix(beta, smoothed_one_hot(3, 0.5))).sum(axis=0)
    np.testing.assert_allclose(ema, eg_update(np.full(3, 1 / 3), colsum, 0.1), rtol=1e-12)
    np.testing.assert_allclose(cumulative, eg_update(np.full(3, 1 / 3), colsum, 0.1 * 20), rtol=1e-12)
    assert ema.max() / ema.min() <= np.exp(0.1) < cumulative.max() / cumulative.min()


def test_aioli_released_settings_per_number_of_domains():
    two, three, seven = AioliConfig.released(2), AioliConfig.released(3), AioliConfig.released(7)
    assert (two.eta, two.ema, two.lp_steps, two.one_hot_factor) == (0.2, 0.1, 4, 0.625)
    assert (three.eta, three.ema, three.lp_steps, three.one_hot_factor) == (0.1, 0.5, 6, 0.5)
    assert (seven.eta, seven.ema, seven.lp_rounds, seven.lp_steps, seven.update_steps) == (1.0, 0.1, 2, 10, 200)


def test_aioli_restricted_setting_restarts_from_uniform_after_the_prior():
    """The release trains --prior-steps at the prior, then starts the rounds from uniform; with
    dynamic_start="prior" the EG steps start from the prior instead."""
    a_true = np.array([[0.02, 0.004], [0.002, 0.01]])
    prior = [0.8, 0.2]
    results = {}
    for start in ("uniform", "prior"):
        cfg = AioliConfig.released(2, lp_rounds=1, lp_steps=2, update_steps=20, prior_weights=prior,
                                   prior_steps=10, dynamic_start=start)
        method = _begun(Aioli(cfg), 50)
        used = _simulate(method, a_true, 50, [3.0, 3.0])
        np.testing.assert_allclose(used[:10], np.tile(prior, (10, 1)))
        raw = np.asarray(method.state["raw_a"][0])
        base = np.full(2, 0.5) if start == "uniform" else np.array(prior)
        np.testing.assert_allclose(used[14], eg_update(base, normalise_interactions(raw).sum(axis=0), 0.2),
                                   rtol=1e-12)
        results[start] = used[14]
    assert abs(results["uniform"][0] - 0.5) < 0.1 < results["prior"][0] - 0.5


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
        callback.on_step(ctx, SimpleNamespace(steps_done=step + 1, train_loss={"a": 0.0, "b": 0.0}))
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
