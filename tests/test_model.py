"""The decoder on its own: shapes, parameter counts, packing, embedding variants, presets."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mixjax.errors import MixjaxError
from mixjax.model import PRESETS, ModelConfig, get_config, init_model
from mixjax.model.decoder import rope_inv_freq, rope_tables

CFG = ModelConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64)


def jitted(model):
    """The model's forward as one jitted function (eager op-by-op calls are slow to dispatch)."""
    g, p = nnx.split(model)
    f = jax.jit(lambda p, *a, dtype=None: nnx.merge(g, p)(*a, dtype=dtype), static_argnames="dtype")
    return lambda *a, dtype=None: f(p, *a, dtype=dtype)


def test_shapes_and_parameter_count():
    model = init_model(CFG)
    logits = jitted(model)(jnp.zeros((3, 11), jnp.int32))
    assert logits.shape == (3, 11, 61) and logits.dtype == jnp.float32
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == CFG.num_params()
    untied = CFG.replace(tie_embeddings=False, arch="qwen2", qkv_bias=True)
    n2 = sum(x.size for x in jax.tree.leaves(nnx.state(init_model(untied), nnx.Param)))
    assert n2 == untied.num_params() and n2 > n


def test_presets():
    assert 0.4e6 < get_config("tiny", vocab_size=259).num_params() < 0.6e6
    assert 2e6 < get_config("small", vocab_size=259).num_params() < 5e6
    assert 0.45e9 < get_config("qwen2.5-0.5b").num_params() < 0.55e9
    assert 7.5e9 < get_config("llama-3.1-8b").num_params() < 8.5e9
    assert 3.0e9 < get_config("llama-3.2-3b").num_params() < 3.5e9
    assert set(PRESETS) >= {"tiny", "small", "qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-3b", "llama-3.1-8b"}
    with pytest.raises(MixjaxError, match="unknown model preset"):
        get_config("gpt5")
    with pytest.raises(MixjaxError, match="needs a vocab_size"):
        get_config("tiny")
    with pytest.raises(MixjaxError, match="smaller|<"):
        get_config("qwen2.5-0.5b", vocab_size=200_000)


def test_packed_rows_equal_separate_sequences():
    model = jitted(init_model(CFG, seed=1))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 61, 7), rng.integers(0, 61, 5)
    row = jnp.asarray(np.concatenate([a, b, [0, 0]])[None], jnp.int32)
    seg = jnp.asarray([[1] * 7 + [2] * 5 + [0, 0]], jnp.int32)
    pos = jnp.asarray([list(range(7)) + list(range(5)) + [0, 1]], jnp.int32)
    packed = np.asarray(model(row, pos, seg))
    np.testing.assert_allclose(packed[0, :7], np.asarray(model(jnp.asarray(a[None], jnp.int32)))[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 7:12], np.asarray(model(jnp.asarray(b[None], jnp.int32)))[0], atol=1e-5)


def test_onehot_and_take_embeddings_agree_with_gradients():
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 9)), jnp.int32)
    outs = []
    for impl in ("onehot", "take"):
        model = init_model(CFG.replace(embed_impl=impl), seed=2)
        g, p = nnx.split(model, nnx.Param)
        loss = lambda p: jnp.mean(nnx.merge(g, p)(toks) ** 2)  # noqa: E731
        outs.append(jax.jit(jax.value_and_grad(loss))(p))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_llama3_rope_scaling_changes_only_low_frequencies():
    base = CFG.replace(head_dim=64, rope_theta=500000.0)
    scaled = base.replace(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    a, b = rope_inv_freq(base), rope_inv_freq(scaled)
    assert a[0] == b[0] and np.isclose(b[-1], a[-1] / 8)
    assert hash(scaled) and scaled.rope_scaling_dict["factor"] == 8.0


@pytest.mark.parametrize("max_positions", [256, 2048, 131072])
def test_rope_tables_match_direct_evaluation(max_positions):
    inv = rope_inv_freq(CFG.replace(head_dim=64, rope_theta=500000.0))
    rng = np.random.default_rng(0)
    pos = np.concatenate([np.arange(min(300, max_positions)), rng.integers(0, max_positions, 500),
                          [max_positions - 1]]).astype(np.int32)[None]
    cos, sin = (np.asarray(t[0]) for t in rope_tables(jnp.asarray(pos), inv, max_positions))
    angle = pos[0][:, None].astype(np.float64) * inv.astype(np.float64)
    np.testing.assert_allclose(cos, np.cos(angle), rtol=0, atol=3e-7)
    np.testing.assert_allclose(sin, np.sin(angle), rtol=0, atol=3e-7)
    far = np.asarray(rope_tables(jnp.asarray([[2 * max_positions]], jnp.int32), inv, max_positions)[0])
    assert np.isnan(far).all()  # past the tables: NaN, not a wrong angle


def test_bf16_compute_is_close_to_f32():
    model = jitted(init_model(CFG, seed=3))
    toks = jnp.asarray(np.random.default_rng(1).integers(0, 61, (2, 16)), jnp.int32)
    a = np.asarray(model(toks))
    b = np.asarray(model(toks, dtype=jnp.bfloat16))
    assert b.dtype == np.float32 and np.max(np.abs(a - b)) < 0.05


def test_causal_query_blocks_do_not_change_the_result():
    rng = np.random.default_rng(4)
    toks = jnp.asarray(rng.integers(0, 61, (2, 48)), jnp.int32)
    seg = jnp.asarray(np.repeat([[1] * 20 + [2] * 20 + [0] * 8], 2, 0), jnp.int32)
    pos = jnp.asarray(np.repeat([list(range(20)) * 2 + list(range(8))], 2, 0), jnp.int32)
    ref = np.asarray(jitted(init_model(CFG.replace(attn_blocks=1), seed=5))(toks, pos, seg))
    for n in (3, 4):  # 48 / 4 and 48 / 3: blocks that cut through segments
        got = np.asarray(jitted(init_model(CFG.replace(attn_blocks=n), seed=5))(toks, pos, seg))
        np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("d, f, tied", [(8, 24, False), (24, 8, False), (8, 24, True)])
def test_projection_gradient_matches_plain_autodiff(d, f, tied):
    """`project`'s weight gradient (an explicit transpose, then a row-major dot) equals the
    gradient of a plain matmul, and XLA does not fold a transpose back into a dot: no compiled dot
    contracts its left operand's major axis (YNNPACK does not take those; Eigen runs them). Cases:
    transpose x, transpose dy, and a weight used transposed (a tied embedding's LM head)."""
    from mixjax.model.decoder import project

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, d)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((f, d) if tied else (d, f)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((3, 5, f)), jnp.float32)
    as_dxf = (lambda w: w.T) if tied else (lambda w: w)
    ours = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(project(x, as_dxf(w))) * c), argnums=(0, 1)))
    plain = jax.grad(lambda x, w: jnp.sum(jnp.sin(jnp.einsum("bld,df->blf", x, as_dxf(w))) * c), argnums=(0, 1))
    for got, want in zip(ours(x, w), plain(x, w)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    hlo = ours.lower(x, w).compile().as_text()
    assert " dot(" in hlo and not _dots_contracting_a_major_axis(hlo)


def _dots_contracting_a_major_axis(hlo: str) -> list[str]:
    """Compiled dots that contract their left operand's first non-batch axis, the major axis of a
    matrix: YNNPACK does not take those, Eigen runs them (slower: benchmarks/bench_dots.py)."""
    found = []
    for line in hlo.splitlines():
        if " dot(" not in line:
            continue
        batch = re.search(r"lhs_batch_dims=\{([\d,]*)\}", line)
        n_batch = len(batch.group(1).split(",")) if batch and batch.group(1) else 0
        if re.search(r"lhs_contracting_dims=\{(\d+)\}", line).group(1) == str(n_batch):
            found.append(line)
    return found


def test_no_dot_of_the_train_gradient_contracts_a_major_axis():
    """The whole model's gradient (tied embeddings, one-hot embedding, GQA attention, SwiGLU) has
    no dot left for Eigen on CPU: every transpose the custom VJPs make stays out of the dots."""
    graphdef, params = nnx.split(init_model(CFG), nnx.Param)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 32)), jnp.int32)

    def loss(p):
        logits = nnx.merge(graphdef, p)(toks)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), toks[..., None], axis=-1))

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert hlo.count(" dot(") >= 20 and not _dots_contracting_a_major_axis(hlo)


def test_attention_gradient_matches_plain_autodiff():
    """`attend`'s hand-written backward (keys-major weights, only E-wide operands transposed)
    equals autodiff of the plain formula, under a causal mask that also cuts segments, and none of
    its compiled dots contracts a left operand's major axis (autodiff's dK and dV do)."""
    from mixjax.kernels.cpu import attend_row_major
    from mixjax.kernels.plain import attend_plain

    rng = np.random.default_rng(0)
    b, k, m, s, e = 2, 2, 12, 10, 8
    q, dout = (jnp.asarray(rng.standard_normal((b, k, m, e)), jnp.float32) for _ in range(2))
    key, val = (jnp.asarray(rng.standard_normal((b, k, s, e)), jnp.float32) for _ in range(2))
    # query row r is position r % 6 of its head; key j is seen from positions >= j - 4, and in
    # batch row 1 positions below 3 also lose keys 7-9 (cut off, as a segment boundary would)
    pos_M = np.arange(m) % 6
    keep = (np.arange(s)[:, None] <= pos_M[None, :] + 4)[None, None].repeat(b, 0)
    keep[1, :, 7:, :] &= pos_M[None, :] >= 3
    keep = jnp.asarray(keep)

    def loss(fn):
        return lambda q, key, val: jnp.sum(jnp.sin(fn(q, key, val, keep)) * dout)

    ours = jax.jit(jax.grad(loss(attend_row_major), argnums=(0, 1, 2)))
    plain = jax.jit(jax.grad(loss(attend_plain), argnums=(0, 1, 2)))
    np.testing.assert_allclose(np.asarray(attend_row_major(q, key, val, keep)),
                               np.asarray(attend_plain(q, key, val, keep)), rtol=1e-5, atol=1e-6)
    for got, want in zip(ours(q, key, val), plain(q, key, val)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert _dots_contracting_a_major_axis(plain.lower(q, key, val).compile().as_text())  # the check sees them
    hlo = ours.lower(q, key, val).compile().as_text()
    assert hlo.count(" dot(") >= 6 and not _dots_contracting_a_major_axis(hlo)


def _loss_and_grads(cfg, params, toks, seg, pos):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: init_model(cfg)))

    def loss(p):
        logits = nnx.merge(graphdef, p)(toks, pos, seg)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), toks[..., None], axis=-1))

    return jax.jit(jax.value_and_grad(loss))(params)


def _packed_batch(b=2, l=24, vocab=61):
    rng = np.random.default_rng(3)
    toks = jnp.asarray(rng.integers(0, vocab, (b, l)), jnp.int32)
    seg = np.ones((b, l), np.int32)
    seg[:, 10:] = 2
    seg[1, 18:] = 0  # padding at the end of row 1
    pos = np.concatenate([np.arange(10), np.arange(l - 10)])[None].repeat(b, 0)
    return toks, jnp.asarray(seg), jnp.asarray(pos, jnp.int32)


@pytest.mark.parametrize("remat,scan,attention", [
    pytest.param("none", False, "plain", marks=pytest.mark.slow),
    pytest.param("full", True, "plain", marks=pytest.mark.slow),
    ("dots", True, "blockwise"), pytest.param("full", False, "blockwise", marks=pytest.mark.slow)])
def test_remat_unrolled_layers_and_blockwise_attention_give_the_same_loss_and_gradients(remat, scan, attention):
    """Rematerialisation, unrolling and the attention implementation change how the step
    computes, not what: the same loss and gradients as the scanned, non-rematerialised decoder
    with the plain attention (3 layers, packed rows with padding, GQA)."""
    cfg = CFG.replace(n_layers=3, scan_layers=True)
    params = nnx.state(init_model(cfg, seed=2), nnx.Param)
    batch = _packed_batch()
    ref_loss, ref_grads = _loss_and_grads(cfg, params, *batch)
    loss, grads = _loss_and_grads(cfg.replace(remat=remat, scan_layers=scan, attention=attention), params, *batch)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-7)


def _grad_temp_bytes(cfg, b, l):
    graphdef, params = nnx.split(nnx.eval_shape(lambda: init_model(cfg)), nnx.Param)
    toks = jax.ShapeDtypeStruct((b, l), jnp.int32)

    def loss(p, t):
        return jnp.mean(nnx.merge(graphdef, p)(t))

    return jax.jit(jax.grad(loss)).lower(params, toks).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_remat_keeps_less_for_the_backward():
    """XLA's memory analysis of the scanned decoder's gradient (the large presets' form): full remat
    keeps less than dots, dots less than none (at a shape where the activations dominate)."""
    cfg = CFG.replace(n_layers=4, dim=64, hidden_dim=256, vocab_size=64, scan_layers=True)
    none, dots, full = (_grad_temp_bytes(cfg.replace(remat=r), 4, 256) for r in ("none", "dots", "full"))
    assert full < dots < none, (none, dots, full)


def test_scan_by_default_only_above_four_layers():
    assert not CFG.replace(n_layers=4).scanned and CFG.replace(n_layers=5).scanned
    assert CFG.replace(n_layers=2, scan_layers=True).scanned and not CFG.replace(n_layers=9, scan_layers=False).scanned


def test_scanned_layers_compile_to_one_loop_body():
    """With scanned layers the compiled gradient holds one layer's dots whatever the depth; the
    unrolled one holds a copy per layer (compile time follows the program's size)."""
    def dots(n_layers, scan):
        cfg = CFG.replace(n_layers=n_layers, scan_layers=scan)
        graphdef, params = nnx.split(nnx.eval_shape(lambda: init_model(cfg)), nnx.Param)
        hlo = jax.jit(jax.grad(lambda p, t: jnp.mean(nnx.merge(graphdef, p)(t)))).lower(
            params, jax.ShapeDtypeStruct((2, 16), jnp.int32)).as_text()
        return hlo.count("dot_general")

    assert dots(2, True) == dots(8, True)
    assert dots(8, False) > dots(2, False) > dots(2, True) - 1
