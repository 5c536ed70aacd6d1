"""Causal flash attention over packed segments with grouped-query heads, as Pallas Triton kernels.

Query head h reads kv head h // G (G = H / K query heads per kv head) through the BlockSpecs'
index maps, so K and V are never repeated per query head: the forward and dQ kernels run one
program per (query block, row, query head) and point it at its kv head's K/V; the dK/dV kernel
runs one program per (key block, row, kv head) and loops over the G query heads of its group,
summing their contributions in registers, so dK and dV are written once, K-sized.

Key s is visible to query l iff s <= l and segment_ids[s] == segment_ids[l]. Besides the tiles
above the diagonal, each program skips the tiles outside its segments (`segment_extents`; with
packed documents, those between one document's queries and an earlier one's keys). Scores and
softmax statistics are float32, in base 2 (exp2 is the GPU's native exponential): the forward
saves lse2 = log2(sum_s 2^(s2_s)) of the scaled scores s2 = q.k * scale * log2(e) per query row, and
the backward recomputes each tile's probabilities from it (flash-attention 2). Masked scores
are a large finite value, not -inf: a row whose keys in a tile are all masked gets no NaN, and
the online rescaling removes what such a tile added once its visible keys arrive (every query
sees at least itself).

Runs on a CUDA GPU, and on the CPU in Pallas interpret mode (`interpret=True`, for tests);
`jax.export(..., platforms=["cuda"])` lowers it on a machine without a GPU. Learned from JAX's
`jax.experimental.pallas.ops.gpu.attention` (which has no GQA) and the Triton fused-attention
tutorial.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
LOG2_E = math.log2(math.e)

# Shared memory for one thread block: an H100 SM has 228 KiB, of which one block may use 227
# (A100: 164). The tiles below are sized against SMEM_BUDGET, which leaves about 35 KiB of the
# H100's 227 for what the operand count in `dkv_smem_bytes` / `dq_smem_bytes` does not see
# (Triton's layout-conversion and reduction scratch, the segment ids, lse and delta rows).
SMEM_BLOCK_LIMIT = 227 * 1024
SMEM_BUDGET = 192 * 1024
# No tile side above 128: a [128, 128] float32 score tile is 64 KiB of the SM's 256 KiB
# register file, and the dK/dV program holds two (scores and dP) besides its dK and dV
# accumulators; 256-row tiles would spill.
MAX_TILE = 128
MIN_TILE = 16  # Triton's dot wants every side >= 16
STAGES = 2  # software pipelining: the streamed tiles of a loop are double-buffered


def dkv_smem_bytes(block_q: int, block_k: int, head_dim: int, itemsize: int, stages: int = STAGES) -> int:
    """Shared memory of the dK/dV program's operand tiles: K and V resident ([block_k, E] each),
    Q and dO streamed ([block_q, E] each, `stages` buffers), P^T and dS^T staged for their
    matmuls ([block_k, block_q] each), all in the input dtype."""
    return itemsize * (2 * block_k * head_dim + stages * 2 * block_q * head_dim + 2 * block_q * block_k)


def dq_smem_bytes(block_q: int, block_k: int, head_dim: int, itemsize: int, stages: int = STAGES) -> int:
    """Shared memory of the dQ program's operand tiles: Q and dO resident ([block_q, E] each),
    K and V streamed ([block_k, E] each, `stages` buffers), dS staged ([block_q, block_k])."""
    return itemsize * (2 * block_q * head_dim + stages * 2 * block_k * head_dim + block_q * block_k)


def _largest_tiles(smem_bytes, head_dim: int, itemsize: int) -> tuple[int, int]:
    """(block_q, block_k) of the largest area, powers of two in [MIN_TILE, MAX_TILE], whose
    `smem_bytes` fits SMEM_BUDGET; ties go to the larger block_q. (dK/dV: its float32 dK and dV
    accumulators, [block_k, E] each, live in registers through the whole loop, so a shorter
    block_k leaves room for the score tiles; dQ: block_q sets how often K and V are re-read.)"""
    sides = [1 << p for p in range(MIN_TILE.bit_length() - 1, MAX_TILE.bit_length())]
    fits = [(bq, bk) for bq in sides for bk in sides if smem_bytes(bq, bk, head_dim, itemsize) <= SMEM_BUDGET]
    if not fits:
        return MIN_TILE, MIN_TILE
    return max(fits, key=lambda t: (t[0] * t[1], t[0]))


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles (rows of queries, rows of keys) of the forward, dK/dV and dQ kernels."""
    fwd_q: int
    fwd_k: int
    dkv_q: int
    dkv_k: int
    dq_q: int
    dq_k: int

    @classmethod
    def for_head_dim(cls, head_dim: int, dtype) -> BlockSizes:
        """The largest tiles whose operands fit shared memory (`dkv_smem_bytes`, `dq_smem_bytes`
        against SMEM_BUDGET = 192 KiB); in bfloat16 (q x k rows):

        * E = 128: dK/dV 128 x 64: 2*(2*64*128 + 2*2*128*128 + 2*128*64) = 192 KiB (128 x 128
          would be 256); dQ 128 x 64: 2*(2*128*128 + 2*2*64*128 + 128*64) = 144 KiB (128 x 128:
          224, within the H100's 227 KiB by 3).
        * E = 64: dK/dV 128 x 128: 2*(2*128*64 + 2*2*128*64 + 2*128*128) = 160 KiB; dQ 128 x 128:
          2*(2*128*64 + 2*2*128*64 + 128*128) = 128 KiB.

        The forward keeps 128 x 128 (as JAX's kernel), 64 x 64 in float32 with E > 64: its K and
        V tiles, double-buffered, would take 2*2*128*E*4 = 256 KiB at E = 128.

        Checked by compiling the kernels' Triton IR for sm_90a with Triton 3.9 and its ptxas
        (`benchmarks/kernel_resources.py`, no GPU needed): every kernel takes less shared memory
        than counted here (at E = 128 dK/dV 128 x 64 177.5 KiB, no spills, where 64 x 128,
        FlashAttention-2's own tile, spills 620 bytes a thread); see benchmarks/README.md."""
        itemsize = jnp.dtype(dtype).itemsize
        head_dim = max(MIN_TILE, pl.next_power_of_2(head_dim))  # what the kernels load
        fwd = 64 if itemsize > 2 and head_dim > 64 else 128
        dkv_q, dkv_k = _largest_tiles(dkv_smem_bytes, head_dim, itemsize)
        dq_q, dq_k = _largest_tiles(dq_smem_bytes, head_dim, itemsize)
        return cls(fwd, fwd, dkv_q, dkv_k, dq_q, dq_k)

    def capped(self, limit: int) -> BlockSizes:
        """Every tile at most `limit` (a power of two >= MIN_TILE), e.g. a short sequence's length."""
        return BlockSizes(*(min(b, limit) for b in dataclasses.astuple(self)))

    @property
    def largest(self) -> int:
        return max(dataclasses.astuple(self))


def segment_extents(segment_ids_BxL):
    """[B, 3, L] int32: each position's segment id, and the first and last position in its row
    holding that id (ids need not be contiguous or sorted). The kernels skip the tiles outside
    them: a query block starts at the key block of its queries' earliest first position, a key
    block stops at the query block of its keys' latest last position."""
    b, l = segment_ids_BxL.shape
    seg = segment_ids_BxL.astype(jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    order = jnp.argsort(seg, axis=1, stable=True)  # positions grouped by id, ascending within each
    ids = jnp.take_along_axis(seg, order, axis=1)
    edge = ids[:, 1:] != ids[:, :-1]
    ones = jnp.ones((b, 1), bool)
    run_first = lax.cummax(jnp.where(jnp.concatenate([ones, edge], 1), pos, 0), axis=1)
    run_last = lax.cummin(jnp.where(jnp.concatenate([edge, ones], 1), pos, l - 1), axis=1, reverse=True)
    inverse = jnp.argsort(order, axis=1)
    first, last = (jnp.take_along_axis(jnp.take_along_axis(order, run, axis=1), inverse, axis=1)
                   for run in (run_first, run_last))
    return jnp.stack([seg, first, last], axis=1)


# ------------------------------------------------------------------------------------ kernels


def _visible(seg_q, seg_k, start_q, start_k):
    """[Q, C] mask: same segment and key position <= query position."""
    pos_q = start_q + lax.broadcasted_iota(jnp.int32, (seg_q.shape[0], seg_k.shape[0]), 0)
    pos_k = start_k + lax.broadcasted_iota(jnp.int32, (seg_q.shape[0], seg_k.shape[0]), 1)
    return (seg_q[:, None] == seg_k[None, :]) & (pos_k <= pos_q)


def _scores2(q, k, seg_q, seg_k, start_q, start_k, scale):
    """Masked float32 scores of a tile in base 2: q.k * scale * log2(e)."""
    s = plgpu.dot(q, k, trans_b=True) * (scale * LOG2_E)
    return jnp.where(_visible(seg_q, seg_k, start_q, start_k), s, MASK_VALUE)


def _key_blocks(seg_ref, start_q: int, block_q: int, block_k: int):
    """(first, end) key blocks a query block sees: from its queries' earliest segment start to
    the block holding its last query (causal)."""
    first = lax.div(jnp.min(seg_ref[1, pl.ds(start_q, block_q)]), block_k)
    return first, lax.div(start_q + block_q + block_k - 1, block_k)


def _forward_kernel(q_ref, k_ref, v_ref, seg_ref, o_ref, lse_ref, *, scale, block_k):
    """One query block of one head: online softmax over the key blocks at or before it."""
    block_q = q_ref.shape[0]
    start_q = pl.program_id(0) * block_q
    q = q_ref[...]
    seg_q = seg_ref[0, pl.ds(start_q, block_q)]

    def key_block(j, carry):
        o, m, l = carry
        start_k = j * block_k
        k = k_ref[pl.ds(start_k, block_k), :]
        s = _scores2(q, k, seg_q, seg_ref[0, pl.ds(start_k, block_k)], start_q, start_k, scale)
        m_new = jnp.maximum(m, s.max(axis=1))
        rescale = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        v = v_ref[pl.ds(start_k, block_k), :]
        o = o * rescale[:, None] + plgpu.dot(p.astype(v.dtype), v)
        return o, m_new, l * rescale + p.sum(axis=1)

    init = (jnp.zeros(q.shape, jnp.float32), jnp.full((block_q,), MASK_VALUE, jnp.float32),
            jnp.zeros((block_q,), jnp.float32))
    o, m, l = lax.fori_loop(*_key_blocks(seg_ref, start_q, block_q, block_k), key_block, init)
    o_ref[...] = (o / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log2(l)


def _dkv_kernel(q_ref, k_ref, v_ref, seg_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                scale, block_q, group):
    """One key block of one kv head: dK and dV summed over the group's query heads and the query
    blocks at or after the key block, accumulated in float32."""
    block_k = k_ref.shape[0]
    start_k = pl.program_id(0) * block_k
    k, v = k_ref[...], v_ref[...]
    seg_k = seg_ref[0, pl.ds(start_k, block_k)]
    # query blocks from the one holding the first key (causal) to the one holding its keys'
    # latest segment end
    first = lax.div(start_k, block_q)
    end = lax.div(jnp.max(seg_ref[2, pl.ds(start_k, block_k)]), block_q) + 1

    def query_block(i, carry, hg):
        dk, dv = carry
        start_q = i * block_q
        rows = pl.ds(start_q, block_q)
        q, do = q_ref[rows, hg, :], do_ref[rows, hg, :]
        s = _scores2(q, k, seg_ref[0, rows], seg_k, start_q, start_k, scale)
        p = jnp.exp2(s - lse_ref[hg, rows][:, None])
        dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
        ds = p * (plgpu.dot(do, v, trans_b=True) - delta_ref[hg, rows][:, None])
        return dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True), dv

    def head(hg, carry):
        return lax.fori_loop(first, end, functools.partial(query_block, hg=hg), carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, group, head, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, seg_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale, block_k):
    """One query block of one head: dQ over the key blocks at or before it."""
    block_q = q_ref.shape[0]
    start_q = pl.program_id(0) * block_q
    q, do = q_ref[...], do_ref[...]
    seg_q = seg_ref[0, pl.ds(start_q, block_q)]
    lse, delta = lse_ref[...], delta_ref[...]

    def key_block(j, dq):
        start_k = j * block_k
        k, v = k_ref[pl.ds(start_k, block_k), :], v_ref[pl.ds(start_k, block_k), :]
        s = _scores2(q, k, seg_q, seg_ref[0, pl.ds(start_k, block_k)], start_q, start_k, scale)
        p = jnp.exp2(s - lse[:, None])
        ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
        return dq + plgpu.dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(*_key_blocks(seg_ref, start_q, block_q, block_k), key_block, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


# ------------------------------------------------------------------------------------ calls


def _warps(rows: int, cols: int, head_dim: int) -> int:
    """8 warps when the score tile or the larger side's [rows, E] tile has 64 x 128 elements or
    more, else 4. (At 4 the 128 x 128 bf16 forward at E = 64 spills 188 bytes a thread, and in
    float32 at E = 128 the 64 x 64 forward 144 and the 128 x 16 dQ 764; at 8 none of them.)"""
    return 8 if max(rows * cols, max(rows, cols) * head_dim) >= 64 * 128 else 4


def _forward(q, k, v, seg, scale, blocks: BlockSizes, interpret):
    """-> (O [B, L, H, E], lse2 [B, H, L] float32). Grid: (query block, row, query head)."""
    b, l, h, e = q.shape
    group = h // k.shape[2]
    bq, bk = blocks.fwd_q, blocks.fwd_k
    q_spec = pl.BlockSpec((None, bq, None, e), lambda i, r, hq: (r, i, hq, 0))
    kv_spec = pl.BlockSpec((None, l, None, e), lambda i, r, hq: (r, 0, lax.div(hq, group), 0))
    return pl.pallas_call(
        functools.partial(_forward_kernel, scale=scale, block_k=bk),
        grid=(l // bq, b, h),
        in_specs=[q_spec, kv_spec, kv_spec, pl.BlockSpec((None, 3, l), lambda i, r, hq: (r, 0, 0))],
        out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda i, r, hq: (r, hq, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, l), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=_warps(bq, bk, e), num_stages=STAGES),
        interpret=interpret, name="flash_gqa_forward",
    )(q, k, v, seg)


def _backward_dkv(q, k, v, seg, do, lse, delta, scale, blocks: BlockSizes, interpret):
    """-> (dK, dV) [B, L, K, E]. Grid: (key block, row, kv head); each program reads its group's
    G query heads (one [L, G, E] block of Q and dO) and loops over them."""
    b, l, h, e = q.shape
    kv = k.shape[2]
    group = h // kv
    bq, bk = blocks.dkv_q, blocks.dkv_k
    kv_spec = pl.BlockSpec((None, bk, None, e), lambda j, r, hk: (r, j, hk, 0))
    group_spec = pl.BlockSpec((None, l, group, e), lambda j, r, hk: (r, 0, hk, 0))
    stats_spec = pl.BlockSpec((None, group, l), lambda j, r, hk: (r, hk, 0))
    return pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, block_q=bq, group=group),
        grid=(l // bk, b, kv),
        in_specs=[group_spec, kv_spec, kv_spec, pl.BlockSpec((None, 3, l), lambda j, r, hk: (r, 0, 0)), group_spec,
                  stats_spec, stats_spec],
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=plgpu.CompilerParams(num_warps=_warps(bq, bk, e), num_stages=STAGES),
        interpret=interpret, name="flash_gqa_backward_dkv",
    )(q, k, v, seg, do, lse, delta)


def _backward_dq(q, k, v, seg, do, lse, delta, scale, blocks: BlockSizes, interpret):
    """-> dQ [B, L, H, E]. Grid: (query block, row, query head), K/V of kv head h // G."""
    b, l, h, e = q.shape
    group = h // k.shape[2]
    bq, bk = blocks.dq_q, blocks.dq_k
    q_spec = pl.BlockSpec((None, bq, None, e), lambda i, r, hq: (r, i, hq, 0))
    kv_spec = pl.BlockSpec((None, l, None, e), lambda i, r, hq: (r, 0, lax.div(hq, group), 0))
    stats_spec = pl.BlockSpec((None, None, bq), lambda i, r, hq: (r, hq, i))
    return pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, block_k=bk),
        grid=(l // bq, b, h),
        in_specs=[q_spec, kv_spec, kv_spec, pl.BlockSpec((None, 3, l), lambda i, r, hq: (r, 0, 0)), q_spec,
                  stats_spec, stats_spec],
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=_warps(bq, bk, e), num_stages=STAGES),
        interpret=interpret, name="flash_gqa_backward_dq",
    )(q, k, v, seg, do, lse, delta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, seg, scale, blocks, interpret):
    return _forward(q, k, v, seg, scale, blocks, interpret)[0]


def _attention_fwd(q, k, v, seg, scale, blocks, interpret):
    o, lse = _forward(q, k, v, seg, scale, blocks, interpret)
    return o, (q, k, v, seg, o, lse)


def _attention_bwd(scale, blocks, interpret, res, do):
    q, k, v, seg, o, lse = res
    do = do.astype(q.dtype)
    # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O)
    delta = jnp.einsum("blhe,blhe->bhl", do.astype(jnp.float32), o.astype(jnp.float32))
    dk, dv = _backward_dkv(q, k, v, seg, do, lse, delta, scale, blocks, interpret)
    dq = _backward_dq(q, k, v, seg, do, lse, delta, scale, blocks, interpret)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def flash_attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, segment_ids_BxL, *, scale: float,
                    block_sizes: BlockSizes | None = None, interpret: bool = False):
    """Causal attention within segments -> [B, L, H, E] in q's dtype; differentiable in q, k, v.

    q [B, L, H, E], k and v [B, L, K, E] with K dividing H (query head h reads kv head h // (H/K));
    segment_ids [B, L] int32. L must be a multiple of every tile of `block_sizes` (default:
    `BlockSizes.for_head_dim(E, q.dtype)`); a head dim that is not a power of two >= 16 is
    zero-padded to one (scores and outputs unchanged; `scale` is given, not derived from E)."""
    b, l, h, e = q_BxLxHxE.shape
    if k_BxLxKxE.shape[:2] != (b, l) or v_BxLxKxE.shape != k_BxLxKxE.shape or h % k_BxLxKxE.shape[2] \
            or k_BxLxKxE.shape[3] != e or segment_ids_BxL.shape != (b, l):
        raise ValueError(f"flash_attention: q {q_BxLxHxE.shape}, k {k_BxLxKxE.shape}, v {v_BxLxKxE.shape}, "
                         f"segment ids {segment_ids_BxL.shape} do not fit")
    blocks = block_sizes or BlockSizes.for_head_dim(e, q_BxLxHxE.dtype)
    if any(l % t for t in dataclasses.astuple(blocks)):
        raise ValueError(f"flash_attention: sequence length {l} is not a multiple of every tile of {blocks}")
    ep = max(MIN_TILE, pl.next_power_of_2(e))
    if ep != e:
        q_BxLxHxE, k_BxLxKxE, v_BxLxKxE = (jnp.pad(x, [(0, 0)] * 3 + [(0, ep - e)])
                                           for x in (q_BxLxHxE, k_BxLxKxE, v_BxLxKxE))
    o = _attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, segment_extents(segment_ids_BxL), float(scale), blocks,
                   interpret)
    return o[..., :e]
