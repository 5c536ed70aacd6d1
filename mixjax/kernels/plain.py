"""The 'plain' implementation: textbook scores per causal query block, with a [B, 1, S, L] keep
mask built once for all layers. The decoder's layer calls it itself (its [B, K, G, L, E] layout is
the layer's), not through `mixjax.kernels.attention.packed_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixjax.kernels.cpu import attend_row_major
from mixjax.kernels.platform import target_backend


def attention_mask(segment_ids_BxL):
    """[B, 1, S, L], keys-major (as `attend` takes it): key s is seen by query l when s <= l and
    both are in the same segment (padding, id 0, attends to itself)."""
    l = segment_ids_BxL.shape[1]
    causal_SxL = jnp.triu(jnp.ones((l, l), dtype=bool))
    same_BxSxL = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    return (causal_SxL[None] & same_BxSxL)[:, None]


def attend_plain(q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxM):
    """The textbook form, scores [M, S], for backends that differentiate it well (GPU, TPU)."""
    s_BxKxMxS = jnp.einsum("bkme,bkse->bkms", q_BxKxMxE, k_BxKxSxE, preferred_element_type=jnp.float32)
    s_BxKxMxS = jnp.where(jnp.swapaxes(keep_Bx1xSxM, -1, -2), s_BxKxMxS, jnp.finfo(jnp.float32).min)
    p_BxKxMxS = jax.nn.softmax(s_BxKxMxS, axis=-1).astype(q_BxKxMxE.dtype)
    return jnp.einsum("bkms,bkse->bkme", p_BxKxMxS, v_BxKxSxE)


def attend(q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxM):
    """Softmax attention of M query rows (the G heads of a kv head, times positions) over S keys
    -> [B, K, M, E]; `keep` [B, 1, S, M] says which key each query sees. Queries must be scaled.

    On CPU the gradient goes through `mixjax.kernels.cpu.attend_row_major`; elsewhere it is plain autodiff."""
    fn = attend_row_major if target_backend() == "cpu" else attend_plain
    return fn(q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxM)


def plain_attention(q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, keep_Bx1xSxL, n_blocks: int):
    """Scaled queries [B, K, G, L, E] over keys and values [B, K, S, E] -> [B, K, G, L, E], in
    `n_blocks` causal query blocks: query block i only meets keys [0, end of block i), so the
    masked upper triangle is mostly not computed ((n+1)/2n of the full score matrix for n blocks).
    Per (batch, kv head) the G query heads' positions in a block are the M = G x C rows of ONE
    matmul against that kv head's keys (k/v are not repeated). `n_blocks` must divide L."""
    b, k_heads, g, l, e = q_BxKxGxLxE.shape
    c = l // n_blocks
    outs = []
    for i in range(n_blocks):
        hi = (i + 1) * c
        q_BxKxMxE = q_BxKxGxLxE[:, :, :, i * c:hi].reshape(b, k_heads, g * c, e)
        keep_Bx1xSxGxC = jnp.broadcast_to(keep_Bx1xSxL[:, :, :hi, None, i * c:hi], (b, 1, hi, g, c))
        o_BxKxMxE = attend(q_BxKxMxE, k_BxKxSxE[:, :, :hi], v_BxKxSxE[:, :, :hi],
                           keep_Bx1xSxGxC.reshape(b, 1, hi, g * c))
        outs.append(o_BxKxMxE.reshape(b, k_heads, g, c, e))
    return outs[0] if n_blocks == 1 else jnp.concatenate(outs, axis=3)
