"""The CPU custom VJPs: a matmul and the plain attention's core whose gradients XLA CPU runs fast.

XLA CPU hands a dot that contracts the major axis of both operands to Eigen, several times slower
than YNNPACK's row-major form (benchmarks/bench_dots.py); autodiff of a matmul's weight gradient and
of attention's dK and dV produces exactly such dots. These VJPs are written so that every dot
contracts a row-major left operand's minor axis. Values are those of plain autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixjax.kernels.platform import target_backend


@jax.custom_vjp
def matmul_transposed_wgrad(x_NxD, w_DxF):
    """x @ w whose weight gradient contracts two row-major operands, for XLA CPU.

    The weight gradient x^T dy contracts the token axis, the major axis of both x [N, D] and
    dy [N, F]. XLA CPU hands such a dot to Eigen: 49-62 GFLOP/s on one core at the tiny preset's
    shapes, 69-79 at small's, where YNNPACK runs a row-major x @ w at 77-86
    (benchmarks/bench_dots.py). Transposing the narrower operand first, explicitly (optimization
    barriers keep XLA from folding either transpose back into a dot), lets YNNPACK take the dot.
    The transpose of x is shared by every projection of the same input (q, k, v; gate, up). On two
    cores this wins by up to 1.4x (tiny's MLP down projection) and loses a few percent (small's
    gate/up) per dot; the tiny train step gained 1-4% and small's 0-2% in side-by-side runs."""
    return x_NxD @ w_DxF


def _matmul_fwd(x_NxD, w_DxF):
    return x_NxD @ w_DxF, (x_NxD, w_DxF)


def _matmul_bwd(res, dy_NxF):
    x_NxD, w_DxF = res
    dx_NxD = jax.lax.dot_general(dy_NxF, w_DxF, (((1,), (1,)), ((), ())))
    # The barriers on the products keep a transpose that follows (of dw_FxD here, or of a tied
    # embedding's [D, V] head) from being folded into the dot too.
    if x_NxD.shape[1] <= dy_NxF.shape[1]:
        dw_DxF = jax.lax.optimization_barrier(jax.lax.optimization_barrier(x_NxD.T) @ dy_NxF)
    else:
        dw_FxD = jax.lax.optimization_barrier(jax.lax.optimization_barrier(dy_NxF.T) @ x_NxD)
        dw_DxF = dw_FxD.T
    return dx_NxD.astype(x_NxD.dtype), dw_DxF.astype(w_DxF.dtype)


matmul_transposed_wgrad.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(x_NxD, w_DxF):
    """x @ w; on CPU the weight gradient goes through `matmul_transposed_wgrad`, elsewhere (cuBLAS
    and the TPU handle transposed operands natively) it is plain autodiff."""
    return matmul_transposed_wgrad(x_NxD, w_DxF) if target_backend() == "cpu" else x_NxD @ w_DxF


@jax.custom_vjp
def attend_row_major(q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxM):
    """`mixjax.kernels.plain.attend_plain` computed keys-major, with a backward written out so that all six matmuls
    (forward and backward) contract a row-major left operand's minor axis, for XLA CPU.

    Autodiff of attention contracts the query axis of the [M, S] weights and of dO (for dV) or
    of dS and Q (for dK): the major axis of both operands, which XLA CPU gives to Eigen (28 GFLOP/s
    at the tiny preset's shapes, against 44 for YNNPACK's row-major form; benchmarks/bench_dots.py).
    With the weights kept keys-major ([S, M]) those products are row-major, and the other two
    (O and dQ) become row-major by transposing only E-wide operands (V, K), not score-sized ones.
    Barriers keep XLA from folding the transposes of V, K, dO, O and dQ back into the dots.
    """
    return attend_row_major_fwd(q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxM)[0]


def attend_row_major_fwd(q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxM):
    dt = q_BxKxMxE.dtype
    s_BxKxSxM = jnp.einsum("bkse,bkme->bksm", k_BxKxSxE, q_BxKxMxE, preferred_element_type=jnp.float32)
    s_BxKxSxM = jnp.where(keep_Bx1xSxM, s_BxKxSxM, jnp.finfo(jnp.float32).min)
    p_BxKxSxM = jax.nn.softmax(s_BxKxSxM, axis=-2).astype(dt)  # each query a column
    v_BxKxExS = jax.lax.optimization_barrier(jnp.swapaxes(v_BxKxSxE, -1, -2))
    o_BxKxExM = jax.lax.optimization_barrier(jnp.einsum("bkes,bksm->bkem", v_BxKxExS, p_BxKxSxM))
    o_BxKxMxE = jnp.swapaxes(o_BxKxExM, -1, -2)
    return o_BxKxMxE, (q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxM, p_BxKxSxM, o_BxKxMxE)


def attend_row_major_bwd(res, do_BxKxMxE):
    q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxM, p_BxKxSxM, o_BxKxMxE = res
    dt, f32 = q_BxKxMxE.dtype, jnp.float32
    do_BxKxMxE = do_BxKxMxE.astype(dt)
    dv_BxKxSxE = jnp.einsum("bksm,bkme->bkse", p_BxKxSxM, do_BxKxMxE)
    do_BxKxExM = jax.lax.optimization_barrier(jnp.swapaxes(do_BxKxMxE, -1, -2))
    dp_BxKxSxM = jnp.einsum("bkse,bkem->bksm", v_BxKxSxE, do_BxKxExM, preferred_element_type=f32)
    # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O)
    delta_BxKx1xM = jnp.sum(do_BxKxMxE.astype(f32) * o_BxKxMxE.astype(f32), axis=-1)[:, :, None, :]
    ds_BxKxSxM = (p_BxKxSxM.astype(f32) * (dp_BxKxSxM - delta_BxKx1xM)).astype(dt)
    dk_BxKxSxE = jnp.einsum("bksm,bkme->bkse", ds_BxKxSxM, q_BxKxMxE)
    k_BxKxExS = jax.lax.optimization_barrier(jnp.swapaxes(k_BxKxSxE, -1, -2))
    dq_BxKxExM = jax.lax.optimization_barrier(jnp.einsum("bkes,bksm->bkem", k_BxKxExS, ds_BxKxSxM))
    return jnp.swapaxes(dq_BxKxExM, -1, -2), dk_BxKxSxE, dv_BxKxSxE, None


attend_row_major.defvjp(attend_row_major_fwd, attend_row_major_bwd)
