"""Chunked cross-entropy (`--loss-chunk`): the same losses and update as computing all logits at
once, with a fraction of the memory for a large vocabulary."""

import jax
import numpy as np
import pytest

from mixjax.errors import MixjaxError
from mixjax.model import ModelConfig
from mixjax.train.mesh import make_mesh
from mixjax.train.step import StepConfig, Stepper

CFG = ModelConfig(vocab_size=1000, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64)


def _batch(b, l, v, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.ones((b, l), int)
    seg[:, l // 2:] = 2
    pos = np.concatenate([np.arange(l // 2), np.arange(l - l // 2)])[None].repeat(b, 0)
    dom = rng.integers(0, 2, (b, 2)).repeat(l // 2, 1)
    return {"tokens": rng.integers(0, v, (b, l)), "segment_ids": seg, "positions": pos,
            "loss_mask": rng.random((b, l)) < 0.8, "domain_ids": dom}


def _stepper(cfg, chunk, b=8, l=32):
    return Stepper(StepConfig(cfg, b, l, 2, loss_chunk=chunk), make_mesh(None, jax.devices()[:1]))


def test_chunked_loss_and_gradient_equal_the_whole_sequence_at_once():
    outs = []
    for chunk in (None, 8):
        st = _stepper(CFG, chunk)
        params, batch = st.init_params(0), st.put_batch(_batch(8, 32, 1000))
        total, domain_sums, _ = jax.jit(st._sums)(params, batch)
        grads = jax.jit(jax.grad(lambda p: st._sums(p, batch)[0]))(params)
        outs.append((float(total), np.asarray(domain_sums), jax.device_get(grads)))
    (t0, d0, g0), (t1, d1, g1) = outs
    assert t1 == pytest.approx(t0, rel=1e-6)
    np.testing.assert_allclose(d1, d0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(a).max())


@pytest.mark.slow
def test_chunks_shrink_the_step_memory_for_a_large_vocabulary():
    big = CFG.replace(vocab_size=32_000)

    def temp_bytes(chunk):
        st = _stepper(big, chunk, b=8, l=256)
        state = jax.eval_shape(lambda: st.abstract_state)
        batch = st.put_batch(_batch(8, 256, 32_000))
        compiled = st.train_step.lower(state, batch, np.float32(1e-3), st.no_loss_weights()).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    whole, chunked = temp_bytes(None), temp_bytes(32)
    logits_bytes = 8 * 256 * 32_000 * 4
    assert whole > logits_bytes          # all logits (and their gradient) live at once
    assert chunked < whole / 4


def test_a_chunk_that_does_not_divide_the_sequence_is_refused():
    with pytest.raises(MixjaxError, match="loss_chunk 5 must be a positive divisor of seq_len 32"):
        _stepper(CFG, 5)
