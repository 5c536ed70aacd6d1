"""The reweighted proxy objective of DoReMi and DoGE (the releases': batches sampled stratified, each
domain's mean loss weighted) against independent computations: the train step's loss and gradient,
gradient accumulation, the loss weights surviving a kill and resume; and DoGE's released score from
one clipped gradient of the mixed validation batch, computed on explicit gradient vectors."""

import json

import jax
import numpy as np
import pytest

from mixjax.methods.online_rules import doge_scores
from mixjax.train import Callback, TrainConfig, run_training
from mixjax.train.metrics import read_metrics
from tests.data_fixtures import letter_domain

K = 3


def _stepper(grad_accum=1):
    from mixjax.model import get_config
    from mixjax.train.mesh import make_mesh
    from mixjax.train.step import StepConfig, Stepper

    model = get_config("tiny", 259).replace(n_layers=1, dim=32, hidden_dim=64, n_heads=2, n_kv_heads=1)
    return Stepper(StepConfig(model, 8, 16, K, grad_accum=grad_accum), make_mesh(None, jax.devices()[:1]))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    domain_ids = np.repeat(np.array([[0], [1], [0], [0], [2], [0], [1], [0]], np.int32), 16, axis=1)  # uneven
    return {"tokens": rng.integers(0, 259, (8, 16)).astype(np.int32), "segment_ids": np.ones((8, 16), np.int32),
            "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1)), "loss_mask": rng.random((8, 16)) < 0.8,
            "domain_ids": domain_ids}


@pytest.mark.slow
def test_reweighted_step_trains_on_the_weighted_domain_means():
    import jax.numpy as jnp

    stepper = _stepper()
    params = jax.device_get(stepper.init_params(0))
    host = _batch()
    batch = stepper.put_batch(host)
    m = jax.device_get(stepper.eval_step(params, batch))
    means = np.asarray(m["domain_loss_sum"], np.float64) / np.asarray(m["domain_count"], np.float64)
    w = np.array([1.2, 0.6, 0.2], np.float32)    # any non-negative weights (the proxies pass a distribution)

    def step(weights, st=stepper):
        state = st.init_state(jax.tree.map(jnp.array, params))  # a copy: the step donates its state
        return jax.device_get(st.train_step(state, st.put_batch(host), np.float32(1e-3), weights)[1])

    plain, weighted = step(stepper.no_loss_weights()), step(w)
    token_mean = np.sum(m["domain_loss_sum"]) / np.sum(m["domain_count"])
    assert float(plain["loss"]) == pytest.approx(token_mean, rel=1e-6)
    assert float(weighted["loss"]) == pytest.approx(float(w @ means), rel=1e-6)
    assert abs(float(w @ means) - token_mean) > 1.0                          # the two objectives differ

    def objective(p):
        return jnp.sum(jnp.asarray(w) * stepper.domain_means(p, {k: jnp.asarray(v) for k, v in host.items()}))

    expected_norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(jax.grad(objective)(params)))))
    assert float(weighted["grad_norm"]) == pytest.approx(expected_norm, rel=1e-5)
    # two micro-batches add up to the batch's objective (each domain's mean over the whole batch)
    accumulated = step(w, _stepper(grad_accum=2))
    assert float(accumulated["loss"]) == pytest.approx(float(weighted["loss"]), rel=1e-5)
    assert float(accumulated["grad_norm"]) == pytest.approx(float(weighted["grad_norm"]), rel=1e-5)


def test_doge_scores_are_the_releases_on_explicit_gradient_vectors():
    """Release (trainer/doge_trainer.py): clip every gradient to norm 1, score_j = lr <g_train_j,
    g_val_mix> / (mean clipped training norm + 1e-6), clipped to [0, 5 lr]; g_val_mix is the gradient
    of the mixed validation batch, here the mean of the per-domain validation gradients."""
    rng = np.random.default_rng(1)
    lr = 3e-4
    for scale_val, scale_train in ((0.1, 0.2), (2.0, 3.0), (0.5, 5.0)):
        g_val = rng.standard_normal((K, 50)) * scale_val / np.sqrt(50)
        g_train = rng.standard_normal((K, 50)) * scale_train / np.sqrt(50) + 0.5 * g_val.mean(axis=0)

        def clipped(g):
            n = np.linalg.norm(g)
            return g * min(1.0, 1.0 / (n + 1e-6))

        mix = clipped(g_val.mean(axis=0))
        train = np.stack([clipped(g) for g in g_train])
        expected = lr * (train @ mix) / (np.linalg.norm(train, axis=1).mean() + 1e-6)
        expected = np.clip(expected, 0, 5 * lr)
        got = doge_scores(g_val @ g_train.T, np.linalg.norm(g_train, axis=1), g_val @ g_val.T, lr)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
    # by hand: A column means (6, -0.5), norms (0.5, 3), |g_val_mix| = sqrt(4) / 2 = 1
    got = doge_scores([[8.0, -2.0], [4.0, 1.0]], [0.5, 3.0], [[1.0, 0.0], [0.0, 3.0]], lr=1.0)
    np.testing.assert_allclose(got, [5.0, 0.0], atol=1e-5)        # 6 / 0.75 = 8, clipped to 5 lr
    got = doge_scores([[1.0, 3.0], [0.5, 1.0]], [0.5, 3.0], [[1.0, 0.0], [0.0, 3.0]], lr=1.0)
    np.testing.assert_allclose(got, [0.75 / 0.75, 2.0 / 3.0 / 0.75], rtol=1e-5)


# -- the loss weights through the training loop --------------------------------------------------
SHAPE = dict(model="tiny", batch_size=8, seq_len=16, progress=False, lr=3e-3, checkpoint_every=3,
             model_overrides={"n_layers": 1, "dim": 64, "hidden_dim": 128})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
    from mixjax.data.prepared import PreparedData

    root = tmp_path_factory.mktemp("reweight")
    specs = [parse_domain_flag(f"{c}={letter_domain(root / f'{c}.jsonl', c, 40)}") for c in "abc"]
    prepare(specs, root / "data", PrepareOptions(), progress=False)
    return PreparedData(root / "data")


class Reweighting(Callback):
    """Sets new loss weights after every step from the step's losses (so a wrong restore shows)."""

    def __init__(self, kill_at=None):
        self.kill_at = kill_at

    def on_train_start(self, ctx):
        ctx.loss_weights = np.array([0.5, 0.3, 0.2])

    def on_step(self, ctx, info):
        if info.steps_done == self.kill_at:
            raise KeyboardInterrupt
        losses = np.nan_to_num(np.array([info.train_loss[d] for d in ctx.domains]), nan=1.0)
        ctx.loss_weights = np.exp(losses) / np.exp(losses).sum()


@pytest.mark.slow
def test_loss_weights_are_logged_and_survive_a_kill_and_resume(data, tmp_path):
    cfg = TrainConfig(**SHAPE)
    budget = 8 * 8 * 16
    ref = run_training(cfg, data, {d: 1 / 3 for d in "abc"}, budget, out_dir=tmp_path / "ref", callbacks=[Reweighting()])
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, data, {d: 1 / 3 for d in "abc"}, budget, out_dir=tmp_path / "cut",
                     callbacks=[Reweighting(kill_at=5)])
    res = run_training(cfg, data, {d: 1 / 3 for d in "abc"}, budget, out_dir=tmp_path / "cut", callbacks=[Reweighting()])
    logged = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == logged
    assert res["val_loss"] == ref["val_loss"]
    steps = [r for r in logged if "loss" in r]
    assert steps[0]["loss_weights"] == pytest.approx([0.5, 0.3, 0.2])
    for r in steps:  # the logged objective is the weighted sum of the logged domain means
        present = [(w, r["train_loss"][d]) for w, d in zip(r["loss_weights"], "abc") if r["train_loss"][d] is not None
                   and np.isfinite(r["train_loss"][d])]
        assert r["loss"] == pytest.approx(sum(w * v for w, v in present), rel=1e-5)
    assert list(json.loads((tmp_path / "ref" / "result.json").read_text())["final_weights"].values()) == pytest.approx([1 / 3] * 3)
