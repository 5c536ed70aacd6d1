"""The GQA flash-attention Triton kernel (mixjax.kernels.flash_gqa_gpu) called directly, in Pallas
interpret mode on the CPU, against the textbook attention; and its tile sizes against the shared
memory arithmetic they are chosen by. (Through packed_attention: tests/test_attention.py; lowered
for CUDA inside the train step: tests/test_lowering.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.kernels import flash_gqa_gpu as F
from mixjax.kernels.attention import reference_attention


def _rows_of_segments(l, rows):
    """[B, L] int32 from per-row (id, start, stop) runs; -1 elsewhere (padding)."""
    seg = np.full((len(rows), l), -1, np.int32)
    for b, runs in enumerate(rows):
        for seg_id, start, stop in runs:
            seg[b, start:stop] = seg_id
    return seg


# Row 0: contiguous documents, so whole tiles are skipped (query block [64, 96) starts at key 40,
# key block [0, 32) ends at query 39). Row 1: ids 9 and 5 each in two runs, which see each other.
SEGMENTS_96 = _rows_of_segments(96, [[(9, 0, 10), (2, 10, 40), (5, 40, 90)],
                                     [(9, 0, 10), (2, 10, 40), (5, 40, 60), (9, 60, 70), (5, 70, 88)]])


def test_segment_extents_match_a_loop():
    got = np.asarray(F.segment_extents(jnp.asarray(SEGMENTS_96)))
    for b, row in enumerate(SEGMENTS_96):
        first = [min(np.flatnonzero(row == x)) for x in row]
        last = [max(np.flatnonzero(row == x)) for x in row]
        np.testing.assert_array_equal(got[b], [row, first, last])


@pytest.mark.slow
def test_kernel_with_unequal_tiles_matches_reference():
    """Every kernel with its own tile shape (forward 32 x 16, dK/dV 16 x 32, dQ 32 x 16), so the
    loop bounds of each (causal, and the segments' extents) are exercised off the square; four
    query heads on one kv head; packed segments with -1 padding, ids unsorted and repeated."""
    seg = SEGMENTS_96
    (b, l), h, kv, e = seg.shape, 4, 1, 16
    ks = jax.random.split(jax.random.key(1), 4)
    q, w = (jax.random.normal(x, (b, l, h, e)) for x in (ks[0], ks[3]))
    k, v = (jax.random.normal(x, (b, l, kv, e)) for x in (ks[1], ks[2]))
    blocks = F.BlockSizes(fwd_q=32, fwd_k=16, dkv_q=16, dkv_k=32, dq_q=32, dq_k=16)

    def out_and_grads(attend):
        o, pullback = jax.vjp(attend, q, k, v)
        return o, pullback(w)

    got = jax.jit(lambda: out_and_grads(
        lambda q, k, v: F.flash_attention(q, k, v, jnp.asarray(seg), scale=0.3, block_sizes=blocks, interpret=True)))()
    want = jax.jit(lambda: out_and_grads(lambda q, k, v: reference_attention(q, k, v, jnp.asarray(seg), 0.3)))()
    for name, g, r in zip(("o", "dq", "dk", "dv"), jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == r.shape, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=3e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("e, dkv, dq", [(64, (128, 128), (128, 128)), (128, (128, 64), (128, 64))])
def test_backward_tiles_are_the_largest_that_fit_shared_memory(e, dkv, dq):
    """bfloat16 at the presets' head dims: the documented tiles, within the budget (which is
    within an H100 block's 227 KiB), and doubling either side of either tile (up to the 128 cap)
    would not fit."""
    blocks = F.BlockSizes.for_head_dim(e, jnp.bfloat16)
    assert ((blocks.dkv_q, blocks.dkv_k), (blocks.dq_q, blocks.dq_k)) == (dkv, dq)
    assert (blocks.fwd_q, blocks.fwd_k) == (128, 128)
    assert F.SMEM_BUDGET <= F.SMEM_BLOCK_LIMIT == 227 * 1024
    for smem, (bq, bk) in ((F.dkv_smem_bytes, dkv), (F.dq_smem_bytes, dq)):
        assert smem(bq, bk, e, 2) <= F.SMEM_BUDGET
        for bigger in ((2 * bq, bk), (bq, 2 * bk)):
            assert max(bigger) > F.MAX_TILE or smem(*bigger, e, 2) > F.SMEM_BUDGET, bigger
    # float32 with E > 64: the forward tiles halve (K and V, double-buffered, would be 256 KiB)
    assert F.BlockSizes.for_head_dim(128, jnp.float32).fwd_q == 64


def test_length_not_a_multiple_of_the_tiles_is_refused():
    x = jnp.zeros((1, 48, 2, 16))
    with pytest.raises(ValueError, match="sequence length 48 is not a multiple of every tile"):
        F.flash_attention(x, x, x, jnp.zeros((1, 48), jnp.int32), scale=1.0,
                          block_sizes=F.BlockSizes(32, 32, 32, 32, 32, 32), interpret=True)
