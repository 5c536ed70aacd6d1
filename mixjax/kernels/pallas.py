"""The 'pallas' implementation: Pallas kernels behind one signature, padded to their tiles.

On GPU our Pallas Triton flash-attention kernel (`mixjax.kernels.flash_gqa_gpu`: segment ids and
causal natively, GQA through its index maps, so K/V are never repeated per query head; dK/dV summed
over a group's query heads inside the kernel). On TPU the splash-attention kernel (MQA kernel per kv
head, vmapped over batch and kv heads; segment ids natively). Both run on the CPU in Pallas
interpret mode, for tests only. The Pallas modules are imported when a kernel is traced, not before.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mixjax.kernels.padding import pad_to, round_up


def _pow2_at_least_16(n: int) -> int:
    return max(16, 1 << (max(1, n) - 1).bit_length())


def pallas_gpu(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, block_q, block_k, interpret):
    """Our Pallas Triton flash-attention kernel (`mixjax.kernels.flash_gqa_gpu`): GQA through its
    index maps (K/V never repeated per query head), tiles as large as shared memory allows for the
    head dim and dtype (`BlockSizes.for_head_dim`), none above block_q, block_k or the length
    (each a power of two >= 16). The sequence is padded to the largest tile with segment id -1,
    after every real query, so unseen."""
    from mixjax.kernels import flash_gqa_gpu

    l, e = q_BxLxHxE.shape[1], q_BxLxHxE.shape[3]
    limit = min(_pow2_at_least_16(x) for x in (block_q, block_k, l))
    blocks = flash_gqa_gpu.BlockSizes.for_head_dim(e, q_BxLxHxE.dtype).capped(limit)
    lp = round_up(l, blocks.largest)
    o = flash_gqa_gpu.flash_attention(pad_to(q_BxLxHxE, lp), pad_to(k_BxSxKxE, lp), pad_to(v_BxSxKxE, lp),
                                      pad_to(segment_ids_BxL.astype(jnp.int32), lp, -1), scale=scale,
                                      block_sizes=blocks, interpret=interpret)
    return o[:, :l]


def pallas_tpu(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, block_q, block_k, interpret):
    """Splash attention: its MQA kernel (G query heads over one kv head) vmapped over batch and kv
    heads, causal mask static, segment ids dynamic. Blocks are multiples of 128 (the lane width);
    the sequence is padded to them. Splash takes pre-scaled queries."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

    b, l, h, e = q_BxLxHxE.shape
    kv = k_BxSxKxE.shape[2]
    g = h // kv
    l128 = round_up(l, 128)
    bq, bk = (min(round_up(x, 128), l128) for x in (block_q, block_k))
    lp = round_up(l128, math.lcm(bq, bk))
    sizes = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                              block_kv_dkv=bk, block_kv_dkv_compute=bk, use_fused_bwd_kernel=True)
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((lp, lp)) for _ in range(g)])
    kernel = splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)
    dt = q_BxLxHxE.dtype
    q_BxKxGxLxE = (pad_to(q_BxLxHxE, lp).astype(jnp.float32) * scale).astype(dt).reshape(
        b, lp, kv, g, e).transpose(0, 2, 3, 1, 4)
    k_BxKxSxE = pad_to(k_BxSxKxE, lp).transpose(0, 2, 1, 3)
    v_BxKxSxE = pad_to(v_BxSxKxE, lp).transpose(0, 2, 1, 3)
    seg_BxL = pad_to(segment_ids_BxL.astype(jnp.int32), lp, -1)

    def one_row(q_KxGxLxE, k_KxSxE, v_KxSxE, seg_L):
        ids = splash.SegmentIds(q=seg_L, kv=seg_L)
        return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q_KxGxLxE, k_KxSxE, v_KxSxE)

    o_BxKxGxLxE = jax.vmap(one_row)(q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, seg_BxL)
    return o_BxKxGxLxE.transpose(0, 3, 1, 2, 4).reshape(b, lp, h, e)[:, :l].astype(dt)
