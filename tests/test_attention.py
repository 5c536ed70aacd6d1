"""Packed causal GQA attention (mixjax.kernels.attention): every implementation that runs on the CPU
against the textbook reference (values and gradients), the reference against a numpy loop, the
O(L) memory of the blockwise backward, and the one-line errors of `resolve_attention`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.errors import MixjaxError
from mixjax.kernels import attention as A
from mixjax.kernels import registry
from mixjax.kernels.platform import lowering_for


def _segments(rows, l):
    """Segment ids [B, L] from per-row segment lengths; whatever is left at the end is padding (0)."""
    out = np.zeros((len(rows), l), np.int32)
    for b, lengths in enumerate(rows):
        start = 0
        for seg_id, n in lengths:
            out[b, start:start + n] = seg_id
            start += n
    return jnp.asarray(out)


# Several segments per row, different per row, padding (0) at the end; ids need not be sorted.
# With blocks of 16 or 32 some query rows meet whole key tiles that are masked for them.
SEG_100 = ((1, 30), (2, 50)), ((7, 10), (3, 45), (5, 40))


def _inputs(b, l, h, kv, e, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, l, h, e), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, l, kv, e), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, l, kv, e), jnp.float32).astype(dtype)
    w = jax.random.normal(ks[3], (b, l, h, e), jnp.float32)  # a random linear functional of the output
    return q, k, v, w


def _out_and_grads(impl, q, k, v, seg, w, **kw):
    """Output and the gradient of sum(w * output) w.r.t. q, k, v, in one jit."""
    def f(q, k, v, w):
        o, pullback = jax.vjp(lambda q, k, v: A.packed_attention(q, k, v, seg, impl=impl, **kw), q, k, v)
        return o, pullback(w.astype(o.dtype))
    return jax.jit(f)(q, k, v, w)


def _assert_close(got, want, tol):
    """Max abs error within tol times the magnitude (at least 1) of what is compared."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.all(np.isfinite(got))
    err, mag = np.abs(got - want).max(), max(1.0, np.abs(want).max())
    assert err <= tol * mag, f"max error {err:.3g} > {tol:.1g} x {mag:.3g}"


_REFERENCE_CACHE = {}


def _check_against_reference(impl, b, l, h, kv, e, seg, tol=2e-5, dtype=jnp.float32, **kw):
    q, k, v, w = _inputs(b, l, h, kv, e, dtype)
    o, grads = _out_and_grads(impl, q, k, v, seg, w, **kw)
    key = (b, l, h, kv, e, jnp.dtype(dtype).name, np.asarray(seg).tobytes())
    if key not in _REFERENCE_CACHE:  # several tests share a case: compile its reference once
        _REFERENCE_CACHE[key] = _out_and_grads("reference", q, k, v, seg, w)
    o_ref, grads_ref = _REFERENCE_CACHE[key]
    assert o.shape == (b, l, h, e) and o.dtype == dtype
    _assert_close(o, o_ref, tol)
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        assert g.dtype == dtype, name
        _assert_close(g, g_ref, tol)


def test_flag_help_config_check_and_plan_read_the_one_registry():
    """The implementations are stated once (`mixjax.kernels.registry`): `--attention`'s help,
    ModelConfig's check, `resolve_attention`'s and the plan's stand-ins list exactly them."""
    from mixjax.commands.flags import SPECIAL
    from mixjax.model import ModelConfig
    from mixjax.plan import ATTENTION_STAND_IN

    assert registry.NAMES == ("auto", "plain", "blockwise", "cudnn", "pallas")
    flag_help = SPECIAL["model_overrides"].options["--attention"]["help"]
    assert flag_help.startswith("auto|plain|blockwise|cudnn|pallas (default auto: ")
    want = "attention 'flash': expected one of auto, plain, blockwise, cudnn, pallas"
    with pytest.raises(MixjaxError) as info:
        ModelConfig(vocab_size=8, dim=8, n_layers=1, n_heads=1, n_kv_heads=1, hidden_dim=8, attention="flash")
    assert str(info.value) == want
    with pytest.raises(MixjaxError) as info:
        A.resolve_attention("flash", "cpu")
    assert str(info.value) == want
    assert ATTENTION_STAND_IN == {"auto": "blockwise", "plain": "plain", "blockwise": "blockwise",
                                  "cudnn": "blockwise", "pallas": "blockwise"}


def test_reference_matches_numpy_loop():
    b, l, h, kv, e = 2, 7, 4, 2, 3
    q, k, v, _ = _inputs(b, l, h, kv, e, seed=1)
    seg = _segments((((1, 3), (2, 2)), ((4, 1), (9, 6))), l)  # row 0 ends in padding (0)
    qn, kn, vn, sn = (np.asarray(x, np.float64) for x in (q, k, v, seg))
    want = np.zeros((b, l, h, e))
    for bi in range(b):
        for hi in range(h):
            kvh = hi // (h // kv)
            for t in range(l):
                seen = [s for s in range(t + 1) if sn[bi, s] == sn[bi, t]]
                scores = np.array([qn[bi, t, hi] @ kn[bi, s, kvh] / np.sqrt(e) for s in seen])
                p = np.exp(scores - scores.max())
                p /= p.sum()
                want[bi, t, hi] = sum(pi * vn[bi, s, kvh] for pi, s in zip(p, seen))
    np.testing.assert_allclose(jax.jit(A.reference_attention)(q, k, v, seg), want, atol=1e-5)


@pytest.mark.parametrize("h, kv, block_q, block_k", [
    (4, 2, 32, 32),    # GQA, L = 100 not a multiple of the block
    (2, 2, 32, 16),    # MHA, query and key blocks of different sizes
    (4, 2, 512, 512),  # blocks larger than L are clamped to L
])
def test_blockwise_matches_reference(h, kv, block_q, block_k):
    _check_against_reference("blockwise", 2, 100, h, kv, 16, _segments(SEG_100, 100),
                             block_q=block_q, block_k=block_k)


def test_blockwise_bfloat16():
    _check_against_reference("blockwise", 2, 100, 4, 2, 16, _segments(SEG_100, 100), tol=1e-2,
                             dtype=jnp.bfloat16, block_q=32, block_k=32)


def test_blockwise_memory_is_linear_in_length():
    """Forward + backward at L = 4096: XLA's temporaries stay far below one L x L float32 array
    (the reference needs several)."""
    l = 4096
    x = jax.ShapeDtypeStruct((1, l, 1, 64), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, l), jnp.int32)

    def temp_bytes(impl):
        def grads(q, k, v, seg, w):
            loss = lambda q, k, v: (A.packed_attention(q, k, v, seg, impl=impl, block_q=512, block_k=512) * w).sum()
            return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
        return jax.jit(grads).lower(x, x, x, seg, x).compile().memory_analysis().temp_size_in_bytes

    square = l * l * 4
    assert temp_bytes("reference") > square
    assert temp_bytes("blockwise") < square / 4


@pytest.mark.slow
@pytest.mark.parametrize("kv, e", [(4, 16), (2, 24), (1, 32)])
def test_pallas_gpu_kernel_interpreted(monkeypatch, kv, e):
    """Our Triton kernel (mixjax.kernels.flash_gqa_gpu) through packed_attention: GQA groups of
    1, 2 and 4 query heads, L = 100 padded to 128 (segment -1), a head dim of 24 padded to 32."""
    monkeypatch.setattr(A, "_PALLAS_INTERPRET", "gpu")
    _check_against_reference("pallas", 2, 100, 4, kv, e, _segments(SEG_100, 100), block_q=32, block_k=32)


def test_pallas_tpu_splash_kernel_interpreted(monkeypatch):
    """Splash blocks are multiples of 128: L = 200 pads to two blocks."""
    monkeypatch.setattr(A, "_PALLAS_INTERPRET", "tpu")
    seg = _segments((((1, 90), (2, 80)), ((7, 130), (3, 30), (5, 40))), 200)
    _check_against_reference("pallas", 2, 200, 4, 2, 16, seg, block_q=128, block_k=128)


def test_cudnn_call_path_with_xla(monkeypatch):
    """The cudnn path's exact jax.nn call (is_causal + [B, 1, L, S] segment mask, odd L padded),
    run with implementation='xla'."""
    monkeypatch.setattr(A, "_CUDNN_IMPLEMENTATION", "xla")
    _check_against_reference("cudnn", 2, 99, 4, 2, 16, _segments(SEG_100, 99))


def _one_line_error(impl, backend, **kw):
    with pytest.raises(MixjaxError) as info:
        A.resolve_attention(impl, backend, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("attention") and impl in msg
    return msg


def test_resolve_explicit_and_errors(monkeypatch):
    assert A.resolve_attention("blockwise", "cpu") == "blockwise"
    assert A.resolve_attention("plain", "cpu") == "plain"
    msg = _one_line_error("cudnn", "cpu")
    assert msg == "attention cudnn is not available on the cpu backend (available: plain, blockwise)"
    assert "available: plain, blockwise)" in _one_line_error("pallas", "cpu")
    assert "expected one of auto, plain" in _one_line_error("flash", "cpu")
    monkeypatch.setattr(A, "cudnn_status", lambda: "compute capability 7.5 < 8.0")
    assert _one_line_error("cudnn", "gpu") == ("attention cudnn is not available on the gpu backend "
                                               "(compute capability 7.5 < 8.0) (available: plain, blockwise, pallas)")
    assert A.resolve_attention("pallas", "gpu") == "pallas"
    assert A.resolve_attention("pallas", "tpu") == "pallas"
    monkeypatch.setattr(A, "_PALLAS_INTERPRET", "gpu")
    assert A.resolve_attention("pallas", "cpu") == "pallas"


def test_resolve_auto(monkeypatch):
    assert A.resolve_attention("auto", "cpu") == "plain"
    monkeypatch.setattr(A, "cudnn_status", lambda: None)
    for dtype in (jnp.bfloat16, jnp.float32, None):  # the Triton kernel (cuDNN only when asked for)
        assert A.resolve_attention("auto", "gpu", dtype=dtype) == "pallas"
    assert A.resolve_attention("cudnn", "gpu") == "cudnn"
    monkeypatch.setattr(A, "_device_count", lambda backend: 1)
    assert A.resolve_attention("auto", "tpu") == "pallas"
    monkeypatch.setattr(A, "_device_count", lambda backend: 8)  # not partitioned by XLA: not on a mesh
    assert A.resolve_attention("auto", "tpu") == "blockwise"


def test_check_attention_refuses_what_cudnn_cannot_run_before_compiling(monkeypatch):
    """cuDNN in float32, or with a tensor axis that does not divide the kv heads (q and k/v would be
    split differently, which cuDNN's partitioner refuses at compile time): one line naming the
    setting to change."""
    monkeypatch.setattr(A, "cudnn_status", lambda: None)
    with lowering_for("gpu"):
        assert A.check_attention("auto", jnp.float32, 2, {"tensor": 4}) == "pallas"
        assert A.check_attention("cudnn", jnp.bfloat16, 8, {"data": 1, "fsdp": 2, "tensor": 4}) == "cudnn"
        with pytest.raises(MixjaxError) as info:
            A.check_attention("cudnn", jnp.float32, 2, {})
        assert str(info.value) == ("attention cudnn needs bfloat16 or float16 compute (got float32); "
                                   "use compute_dtype bfloat16, or attention pallas")
        with pytest.raises(MixjaxError) as info:
            A.check_attention("cudnn", jnp.bfloat16, 2, {"data": 1, "fsdp": 2, "tensor": 4})
        assert str(info.value) == ("attention cudnn: the mesh's tensor axis (4) must divide the model's 2 kv heads; "
                                   "choose mesh_shape with a tensor size that does, or attention pallas")


def test_packed_attention_refuses_what_the_backend_lacks():
    q, k, v, _ = _inputs(1, 8, 2, 1, 8)
    seg = jnp.ones((1, 8), jnp.int32)
    for impl in ("cudnn", "pallas"):
        with pytest.raises(MixjaxError, match=f"attention {impl} is not available on the cpu backend"):
            A.packed_attention(q, k, v, seg, impl=impl)
    with pytest.raises(ValueError, match="resolved by the caller"):
        A.packed_attention(q, k, v, seg, impl="plain")


@pytest.mark.slow
def test_pallas_kernel_runs_on_each_devices_share_in_the_sharded_train_step(monkeypatch):
    """Inside the train step on 8 devices (data 2 x fsdp 2 x tensor 2) the Pallas kernel runs
    under shard_map on each device's rows and heads, and the losses equal the plain attention's
    on one device."""
    from mixjax.model import ModelConfig
    from mixjax.train.mesh import make_mesh
    from mixjax.train.step import StepConfig, Stepper
    from tests.test_sharding import _batches

    monkeypatch.setattr(A, "_PALLAS_INTERPRET", "gpu")
    cfg = ModelConfig(vocab_size=67, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, head_dim=16)

    def losses(impl, devices, shape):
        st = Stepper(StepConfig(cfg.replace(attention=impl), 8, 24, 3), make_mesh(shape, devices))
        state = st.init_state(st.init_params(0))
        out = []
        for b in _batches(2):
            state, m = st.train_step(state, st.put_batch(b), np.float32(3e-3), st.no_loss_weights())
            out.append(float(m["loss"]))
        return out

    ref = losses("plain", jax.devices()[:1], None)
    got = losses("pallas", jax.devices(), (2, 2, 2))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
