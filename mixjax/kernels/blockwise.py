"""Blockwise causal attention over packed sequences in pure JAX (the 'blockwise' implementation).

Flash-attention-2 style, any backend and dtype, partitioned by XLA like any other JAX code. A
`jax.custom_vjp` whose forward keeps only O and the per-row logsumexp; the backward recomputes each
score tile. Each pass is one scan over a static list of the tiles on or below the causal diagonal
(`visible_tiles`), so the work is about half the square and every loop has a trip count XLA knows
(a GPU runs a loop without one by syncing with the host every iteration; tests/test_lowering.py
checks the CUDA lowering). Memory O(L) per (batch, head) plus one [B, H, block_q, block_k] tile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.kernels.padding import pad_to, round_up

# Large, finite: a row whose keys in a tile are all masked gets no inf - inf (NaN); the online
# softmax's rescaling removes what such a tile added once the row's visible keys arrive.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


# Layout: query rows of a tile are the G heads of one kv head times block_q positions (M = G x Q
# rows, head-major), so each tile is one batched matmul per (batch, kv head) against that kv
# head's keys, with no K/V repetition. Blocked arrays lead with the block index so a loop picks a
# block with one dynamic index.


def _q_blocks(x_BxLxHxE, kv_heads: int, bq: int):
    """[B, L, H, E] -> [L/Q, B, K, G*Q, E] (row g*Q + t: head k*G + g, position t of the block)."""
    b, l, h, e = x_BxLxHxE.shape
    g = h // kv_heads
    x = x_BxLxHxE.reshape(b, l // bq, bq, kv_heads, g, e).transpose(1, 0, 3, 4, 2, 5)
    return x.reshape(l // bq, b, kv_heads, g * bq, e)


def _q_unblocks(x_NxBxKxMxE, bq: int):
    """Inverse of `_q_blocks`."""
    n, b, kv, m, e = x_NxBxKxMxE.shape
    g = m // bq
    return x_NxBxKxMxE.reshape(n, b, kv, g, bq, e).transpose(1, 0, 4, 2, 3, 5).reshape(b, n * bq, kv * g, e)


def _kv_blocks(x_BxSxKxE, bk: int):
    """[B, S, K, E] -> [S/C, B, K, C, E]."""
    b, s, kv, e = x_BxSxKxE.shape
    return x_BxSxKxE.reshape(b, s // bk, bk, kv, e).transpose(1, 0, 3, 2, 4)


def _kv_unblocks(x_NxBxKxCxE):
    n, b, kv, c, e = x_NxBxKxCxE.shape
    return x_NxBxKxCxE.transpose(1, 0, 3, 2, 4).reshape(b, n * c, kv, e)


def _seg_blocks(seg_BxL, c: int):
    b, l = seg_BxL.shape
    return seg_BxL.reshape(b, l // c, c).transpose(1, 0, 2)


def _tile_scores(q_BxKxMxE, k_BxKxCxE, segq_BxQ, segk_BxC, i, j, scale: float):
    """Scaled, masked float32 scores of query block i against key block j -> [B, K, M, C]."""
    b, kv, m, _ = q_BxKxMxE.shape
    bq, bk = segq_BxQ.shape[1], segk_BxC.shape[1]
    s_BxKxMxC = jnp.einsum("bkme,bkce->bkmc", q_BxKxMxE, k_BxKxCxE, preferred_element_type=jnp.float32)
    s_BxKxGxQxC = (s_BxKxMxC * scale).reshape(b, kv, m // bq, bq, bk)
    pos_q_Qx1 = (i * bq + jnp.arange(bq))[:, None]
    pos_k_1xC = (j * bk + jnp.arange(bk))[None, :]
    visible_Bx1x1xQxC = ((segq_BxQ[:, :, None] == segk_BxC[:, None, :]) & (pos_k_1xC <= pos_q_Qx1))[:, None, None]
    return jnp.where(visible_Bx1x1xQxC, s_BxKxGxQxC, _MASK_VALUE).reshape(b, kv, m, bk)


def visible_tiles(nq: int, nk: int, bq: int, bk: int, key_major: bool = False) -> np.ndarray:
    """[2, T] int32: (query block i, key block j) of every tile on or below the causal diagonal
    (key block j starts at or before query block i's last position), query-major (all of i's
    tiles in order of j, then i + 1's) or, with `key_major`, key-major. A static list: the loops
    over it have a trip count XLA knows (on GPU a loop without one syncs with the host every
    iteration), and tiles above the diagonal are never visited."""
    pairs = [(i, j) for i in range(nq) for j in range(min(nk, ((i + 1) * bq + bk - 1) // bk))]
    if key_major:
        pairs.sort(key=lambda ij: (ij[1], ij[0]))
    return np.asarray(pairs, np.int32).reshape(-1, 2).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segq_BxL, segk_BxS, scale, bq, bk):
    """Blockwise attention; L a multiple of bq, S of bk, padding already in place."""
    return _flash_fwd(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segq_BxL, segk_BxS, scale, bq, bk)[0]


def _flash_fwd(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segq_BxL, segk_BxS, scale, bq, bk):
    """One scan over the visible tiles (query-major), carrying every query block's running
    output, row maximum and row sum (float32) and updating block i's in place."""
    kv = k_BxSxKxE.shape[2]
    k_NxBxKxCxE, v_NxBxKxCxE = _kv_blocks(k_BxSxKxE, bk), _kv_blocks(v_BxSxKxE, bk)
    segk_NxBxC = _seg_blocks(segk_BxS, bk)
    q_NxBxKxMxE = _q_blocks(q_BxLxHxE, kv, bq)
    segq_NxBxQ = _seg_blocks(segq_BxL, bq)
    nq, nk = q_NxBxKxMxE.shape[0], k_NxBxKxCxE.shape[0]

    def tile(carry, ij):
        o_NxBxKxMxE, m_NxBxKxM, l_NxBxKxM = carry
        i, j = ij[0], ij[1]
        v_BxKxCxE = v_NxBxKxCxE[j]
        s_BxKxMxC = _tile_scores(q_NxBxKxMxE[i], k_NxBxKxCxE[j], segq_NxBxQ[i], segk_NxBxC[j], i, j, scale)
        m_BxKxM = m_NxBxKxM[i]
        m_new = jnp.maximum(m_BxKxM, s_BxKxMxC.max(axis=-1))
        rescale_BxKxM = jnp.exp(m_BxKxM - m_new)
        p_BxKxMxC = jnp.exp(s_BxKxMxC - m_new[..., None])
        l_new = l_NxBxKxM[i] * rescale_BxKxM + p_BxKxMxC.sum(axis=-1)
        pv_BxKxMxE = jnp.einsum("bkmc,bkce->bkme", p_BxKxMxC.astype(v_BxKxCxE.dtype), v_BxKxCxE,
                                preferred_element_type=jnp.float32)
        o_new = o_NxBxKxMxE[i] * rescale_BxKxM[..., None] + pv_BxKxMxE
        return (o_NxBxKxMxE.at[i].set(o_new), m_NxBxKxM.at[i].set(m_new), l_NxBxKxM.at[i].set(l_new)), None

    stats_shape = q_NxBxKxMxE.shape[:-1]
    init = (jnp.zeros(q_NxBxKxMxE.shape, jnp.float32), jnp.full(stats_shape, _MASK_VALUE, jnp.float32),
            jnp.zeros(stats_shape, jnp.float32))
    (o_NxBxKxMxE, m_NxBxKxM, l_NxBxKxM), _ = jax.lax.scan(
        tile, init, jnp.asarray(visible_tiles(nq, nk, bq, bk).T))
    o_BxLxHxE = _q_unblocks((o_NxBxKxMxE / l_NxBxKxM[..., None]).astype(q_BxLxHxE.dtype), bq)
    lse_NxBxKxM = m_NxBxKxM + jnp.log(l_NxBxKxM)
    # Residuals: the inputs, the output (the same buffer the caller gets) and the float32
    # logsumexp per row: O(L), no score-sized array.
    return o_BxLxHxE, (q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segq_BxL, segk_BxS, o_BxLxHxE, lse_NxBxKxM)


def _flash_bwd(scale, bq, bk, res, do_BxLxHxE):
    """One scan over the visible tiles (key-major), accumulating dQ, dK and dV (float32) of the
    tile's blocks in place; each tile recomputes its scores from Q, K and the logsumexp."""
    q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segq_BxL, segk_BxS, o_BxLxHxE, lse_NxBxKxM = res
    f32 = jnp.float32
    kv = k_BxSxKxE.shape[2]
    dt = q_BxLxHxE.dtype
    q_NxBxKxMxE = _q_blocks(q_BxLxHxE, kv, bq)
    do_NxBxKxMxE = _q_blocks(do_BxLxHxE.astype(dt), kv, bq)
    # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O)
    delta_NxBxKxM = jnp.sum(do_NxBxKxMxE.astype(f32) * _q_blocks(o_BxLxHxE, kv, bq).astype(f32), axis=-1)
    segq_NxBxQ = _seg_blocks(segq_BxL, bq)
    k_NxBxKxCxE, v_NxBxKxCxE = _kv_blocks(k_BxSxKxE, bk), _kv_blocks(v_BxSxKxE, bk)
    segk_NxBxC = _seg_blocks(segk_BxS, bk)
    nq, nk = q_NxBxKxMxE.shape[0], k_NxBxKxCxE.shape[0]

    def tile(carry, ij):
        dq_NxBxKxMxE, dk_NxBxKxCxE, dv_NxBxKxCxE = carry
        i, j = ij[0], ij[1]
        q_BxKxMxE, do_BxKxMxE = q_NxBxKxMxE[i], do_NxBxKxMxE[i]
        k_BxKxCxE, v_BxKxCxE = k_NxBxKxCxE[j], v_NxBxKxCxE[j]
        s_BxKxMxC = _tile_scores(q_BxKxMxE, k_BxKxCxE, segq_NxBxQ[i], segk_NxBxC[j], i, j, scale)
        p_BxKxMxC = jnp.exp(s_BxKxMxC - lse_NxBxKxM[i][..., None])
        dv_BxKxCxE = jnp.einsum("bkmc,bkme->bkce", p_BxKxMxC.astype(dt), do_BxKxMxE, preferred_element_type=f32)
        dp_BxKxMxC = jnp.einsum("bkme,bkce->bkmc", do_BxKxMxE, v_BxKxCxE, preferred_element_type=f32)
        ds_BxKxMxC = (p_BxKxMxC * (dp_BxKxMxC - delta_NxBxKxM[i][..., None]) * scale).astype(dt)
        dk_BxKxCxE = jnp.einsum("bkmc,bkme->bkce", ds_BxKxMxC, q_BxKxMxE, preferred_element_type=f32)
        dq_BxKxMxE = jnp.einsum("bkmc,bkce->bkme", ds_BxKxMxC, k_BxKxCxE, preferred_element_type=f32)
        return (dq_NxBxKxMxE.at[i].add(dq_BxKxMxE), dk_NxBxKxCxE.at[j].add(dk_BxKxCxE),
                dv_NxBxKxCxE.at[j].add(dv_BxKxCxE)), None

    init = (jnp.zeros(q_NxBxKxMxE.shape, f32), jnp.zeros(k_NxBxKxCxE.shape, f32),
            jnp.zeros(k_NxBxKxCxE.shape, f32))
    (dq_NxBxKxMxE, dk_NxBxKxCxE, dv_NxBxKxCxE), _ = jax.lax.scan(
        tile, init, jnp.asarray(visible_tiles(nq, nk, bq, bk, key_major=True).T))
    dq_BxLxHxE = _q_unblocks(dq_NxBxKxMxE, bq).astype(dt)
    return (dq_BxLxHxE, _kv_unblocks(dk_NxBxKxCxE).astype(k_BxSxKxE.dtype),
            _kv_unblocks(dv_NxBxKxCxE).astype(v_BxSxKxE.dtype), None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, block_q, block_k):
    """Pad queries to a multiple of the query block and keys to one of the key block, run
    `_flash`, slice. Padded keys come after every real query, so causality already hides them;
    they get segment id -1 all the same."""
    l = q_BxLxHxE.shape[1]
    bq, bk = min(block_q, l), min(block_k, l)
    lq, lk = round_up(l, bq), round_up(l, bk)
    seg = segment_ids_BxL.astype(jnp.int32)
    o = _flash(pad_to(q_BxLxHxE, lq), pad_to(k_BxSxKxE, lk), pad_to(v_BxSxKxE, lk),
               pad_to(seg, lq, -1), pad_to(seg, lk, -1), scale, bq, bk)
    return o[:, :l]
