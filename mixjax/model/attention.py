"""Causal attention over packed sequences that never keeps an L x S score tensor for the backward.

A row of the batch holds several documents back to back, told apart by segment ids; a query sees
the keys at or before it in its own segment (padding, id 0, is a segment like any other, so every
query sees at least itself). Query head h reads kv head h // (H // K) (grouped-query attention,
the HF repeat_kv convention). Everything here is a pure function of arrays.

Implementations (`packed_attention(impl=...)`), and where each runs:

* ``blockwise``: pure JAX, flash-attention-2 style, any backend and dtype, partitioned by XLA like
  any other JAX code. A `jax.custom_vjp` whose forward keeps only O and the per-row logsumexp; the
  backward recomputes each score tile. Each pass is one scan over a static list of the tiles on
  or below the causal diagonal (`visible_tiles`), so the work is about half the square and every
  loop has a trip count XLA knows (a GPU runs a loop without one by syncing with the host every
  iteration; tests/test_lowering.py checks the CUDA lowering). Memory O(L) per (batch, head)
  plus one [B, H, block_q, block_k] tile.
* ``pallas``: on GPU our Pallas Triton flash-attention kernel (`mixjax.kernels.flash_gqa_gpu`:
  segment ids and causal natively, GQA through its index maps, so K/V are never repeated per
  query head; dK/dV summed over a group's query heads inside the kernel). On TPU the
  splash-attention kernel (MQA kernel per kv head, vmapped over batch and kv heads; segment ids
  natively). Both run on the CPU
  in Pallas interpret mode, for tests only (`_PALLAS_INTERPRET`). Pallas calls are custom calls
  that XLA does not partition: under a multi-device mesh every device would compute the whole
  batch (correct but wasteful), so 'auto' picks splash only on a single TPU device.
* ``cudnn``: `jax.nn.dot_product_attention(implementation="cudnn")` with is_causal and the
  segment equality as one boolean [B, 1, L, S] mask shared by all heads (the public API has no
  segment ids). cuDNN turns the mask into a [B, 1, L, S] bias and its backward writes a dense
  dbias of that shape, so this path holds O(B L^2) (not per head), the dbias transiently in each
  layer's backward. bfloat16/float16 only (cuDNN's flash attention takes nothing else).
* ``reference``: the textbook form (`reference_attention`), for tests.

'auto' (see `resolve_attention`): cpu -> 'plain' (the decoder's own CPU path, not in this file);
gpu -> 'pallas' (the Triton kernel: segment ids natively, no score-sized array in either pass,
run on each device's share under shard_map, and its CUDA lowering is tested on every commit,
tests/test_lowering.py; 'cudnn' stays explicit: with packed segments its public API takes a
dense [B, 1, L, S] mask whose bias gradient it computes every layer, and it cannot be lowered
here without cuDNN); tpu -> 'pallas' (splash) on a single device, else 'blockwise'. Which is
fastest on an H100 is unmeasured: `benchmarks/bench_gpu.py` times all of them first.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.errors import MixjaxError

IMPLEMENTATIONS = ("auto", "plain", "blockwise", "cudnn", "pallas")

# Test switches. _PALLAS_INTERPRET: None, "gpu" or "tpu": on the cpu backend, run that platform's
# Pallas kernel in interpret mode (slow; tests only). _CUDNN_IMPLEMENTATION: "xla" runs the cudnn
# path's exact call with jax.nn's XLA implementation, which any backend has.
_PALLAS_INTERPRET: str | None = None
_CUDNN_IMPLEMENTATION = "cudnn"
# The platform being traced for when it is not the one running (`lowering_for`).
_TARGET_PLATFORM: str | None = None

# Large, finite: a row whose keys in a tile are all masked gets no inf - inf (NaN); the online
# softmax's rescaling removes what such a tile added once the row's visible keys arrive.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


# ------------------------------------------------------------------------------------ selection


def target_backend() -> str:
    """The backend the code being traced will run on: `jax.default_backend()`, or the platform
    of an enclosing `lowering_for`. Code that takes a backend-specific form asks this."""
    return _TARGET_PLATFORM or jax.default_backend()


@contextlib.contextmanager
def lowering_for(platform: str):
    """Trace for `platform` ("gpu" or "tpu") on this machine, for `jax.export.export(...,
    platforms=["cuda"|"tpu"])`: the model takes that backend's forms and Pallas kernels lower
    for it (not interpreted). A jitted function traced before, for this backend, keeps its
    cached trace: export a fresh one."""
    global _TARGET_PLATFORM
    if platform not in ("gpu", "tpu", "cpu"):
        raise ValueError(f"lowering_for: platform {platform!r} (gpu, tpu or cpu)")
    previous, _TARGET_PLATFORM = _TARGET_PLATFORM, platform
    try:
        yield
    finally:
        _TARGET_PLATFORM = previous


def _cudnn_status() -> str | None:
    """None when cuDNN flash attention can run here, else why not (a few words)."""
    try:
        dev = jax.devices("gpu")[0]
    except RuntimeError:
        return "no GPU"
    cc = getattr(dev, "compute_capability", None)
    try:
        major_minor = tuple(int(x) for x in str(cc).split("."))
    except ValueError:
        return "not a CUDA GPU"
    if major_minor < (8, 0):
        return f"compute capability {cc} < 8.0"
    try:
        from jax._src.lib import cuda_versions
        version = cuda_versions.cudnn_get_version() if cuda_versions is not None else None
    except Exception:  # noqa: BLE001  (private module; any failure means no cuDNN we can use)
        version = None
    return None if version else "cuDNN not found"


def _device_count(backend: str) -> int:
    """Devices of `backend` (all devices of every process), or of the default one if it is absent."""
    try:
        return jax.device_count(backend)
    except RuntimeError:
        return jax.device_count()


def _available(backend: str) -> tuple[str, ...]:
    """The explicit implementations this backend runs, in the order the error lists them."""
    out = ["plain", "blockwise"]
    if backend == "gpu":
        if _cudnn_status() is None:
            out.append("cudnn")
        out.append("pallas")
    elif backend == "tpu" or (backend == "cpu" and _PALLAS_INTERPRET):
        out.append("pallas")
    return tuple(out)


def resolve_attention(impl: str, backend: str | None = None, dtype=None) -> str:
    """`--attention` value -> the implementation to run on `backend` (None: jax.default_backend()).

    'auto': cpu -> 'plain'; gpu -> 'pallas'; tpu -> 'pallas' (splash) on one device, else
    'blockwise' (see the module docstring for why). `dtype` (the compute dtype) is checked by
    `check_attention`. An explicit implementation the backend cannot run raises a one-line
    MixjaxError naming what it has.
    """
    backend = backend or target_backend()
    if impl not in IMPLEMENTATIONS:
        raise MixjaxError(f"`attention` {impl!r}: expected one of {', '.join(IMPLEMENTATIONS)}")
    if impl == "auto":
        if backend == "gpu":
            return "pallas"
        if backend == "tpu":
            return "pallas" if _device_count(backend) == 1 else "blockwise"
        return "plain"
    available = _available(backend)
    if impl not in available:
        why = ""
        if impl == "cudnn" and backend == "gpu":
            why = f" ({_cudnn_status()})"
        raise MixjaxError(f"`attention` {impl} is not available on the {backend} backend{why} "
                          f"(available: {', '.join(available)})")
    return impl


def check_attention(impl: str, dtype, n_kv_heads: int, mesh_sizes: dict | None = None) -> str:
    """The implementation `impl` resolves to for a step computing in `dtype` on a mesh of
    `mesh_sizes` ({axis: size}), or a one-line error naming the setting, before anything compiles:
    an implementation the backend lacks, cuDNN in float32, or cuDNN with a `tensor` axis that does
    not divide the kv heads (q would be split over heads and k/v not, which cuDNN's partitioner
    refuses at compile time)."""
    resolved = resolve_attention(impl, dtype=dtype)
    if resolved == "cudnn" and _CUDNN_IMPLEMENTATION == "cudnn":
        if jnp.dtype(dtype) not in _HALF:
            raise MixjaxError(f"`attention` cudnn needs bfloat16 or float16 compute (got {jnp.dtype(dtype).name}); "
                              "use `compute_dtype` bfloat16, or `attention` pallas")
        t = (mesh_sizes or {}).get("tensor", 1)
        if t > 1 and n_kv_heads % t:
            raise MixjaxError(f"`attention` cudnn: the mesh's tensor axis ({t}) must divide the model's {n_kv_heads} "
                              "kv heads; choose `mesh_shape` with a tensor size that does, or `attention` pallas")
    return resolved


# ------------------------------------------------------------------------------------ reference


def reference_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale=None):
    """Textbook: scores [B, H, L, S] in float32, masked to finfo(float32).min, softmax, @ v.
    The independent form every implementation is tested against. Output in q's dtype."""
    b, l, h, e = q_BxLxHxE.shape
    g = h // k_BxSxKxE.shape[2]
    scale = 1.0 / math.sqrt(e) if scale is None else scale
    f32 = jnp.float32
    k_BxSxHxE = jnp.repeat(k_BxSxKxE.astype(f32), g, axis=2)
    v_BxSxHxE = jnp.repeat(v_BxSxKxE.astype(f32), g, axis=2)
    s_BxHxLxS = jnp.einsum("blhe,bshe->bhls", q_BxLxHxE.astype(f32), k_BxSxHxE) * scale
    causal_LxS = jnp.tril(jnp.ones((l, l), bool))
    same_BxLxS = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    s_BxHxLxS = jnp.where((causal_LxS & same_BxLxS)[:, None], s_BxHxLxS, jnp.finfo(f32).min)
    p_BxHxLxS = jax.nn.softmax(s_BxHxLxS, axis=-1)
    return jnp.einsum("bhls,bshe->blhe", p_BxHxLxS, v_BxSxHxE).astype(q_BxLxHxE.dtype)


# ------------------------------------------------------------------------------------ blockwise
#
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


def _pad_to(x, length: int, value=0):
    """Pad axis 1 of x up to `length`."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _blockwise_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, block_q, block_k):
    """Pad queries to a multiple of the query block and keys to one of the key block, run
    `_flash`, slice. Padded keys come after every real query, so causality already hides them;
    they get segment id -1 all the same."""
    l = q_BxLxHxE.shape[1]
    bq, bk = min(block_q, l), min(block_k, l)
    lq, lk = _round_up(l, bq), _round_up(l, bk)
    seg = segment_ids_BxL.astype(jnp.int32)
    o = _flash(_pad_to(q_BxLxHxE, lq), _pad_to(k_BxSxKxE, lk), _pad_to(v_BxSxKxE, lk),
               _pad_to(seg, lq, -1), _pad_to(seg, lk, -1), scale, bq, bk)
    return o[:, :l]


# ------------------------------------------------------------------------------------ pallas


def _pow2_at_least_16(n: int) -> int:
    return max(16, 1 << (max(1, n) - 1).bit_length())


def _pallas_gpu(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, block_q, block_k, interpret):
    """Our Pallas Triton flash-attention kernel (`mixjax.kernels.flash_gqa_gpu`): GQA through its
    index maps (K/V never repeated per query head), tiles as large as shared memory allows for the
    head dim and dtype (`BlockSizes.for_head_dim`), none above block_q, block_k or the length
    (each a power of two >= 16). The sequence is padded to the largest tile with segment id -1,
    after every real query, so unseen."""
    from mixjax.kernels import flash_gqa_gpu

    l, e = q_BxLxHxE.shape[1], q_BxLxHxE.shape[3]
    limit = min(_pow2_at_least_16(x) for x in (block_q, block_k, l))
    blocks = flash_gqa_gpu.BlockSizes.for_head_dim(e, q_BxLxHxE.dtype).capped(limit)
    lp = _round_up(l, blocks.largest)
    o = flash_gqa_gpu.flash_attention(_pad_to(q_BxLxHxE, lp), _pad_to(k_BxSxKxE, lp), _pad_to(v_BxSxKxE, lp),
                                      _pad_to(segment_ids_BxL.astype(jnp.int32), lp, -1), scale=scale,
                                      block_sizes=blocks, interpret=interpret)
    return o[:, :l]


def _pallas_tpu(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, block_q, block_k, interpret):
    """Splash attention: its MQA kernel (G query heads over one kv head) vmapped over batch and kv
    heads, causal mask static, segment ids dynamic. Blocks are multiples of 128 (the lane width);
    the sequence is padded to them. Splash takes pre-scaled queries."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

    b, l, h, e = q_BxLxHxE.shape
    kv = k_BxSxKxE.shape[2]
    g = h // kv
    l128 = _round_up(l, 128)
    bq, bk = (min(_round_up(x, 128), l128) for x in (block_q, block_k))
    lp = _round_up(l128, math.lcm(bq, bk))
    sizes = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                              block_kv_dkv=bk, block_kv_dkv_compute=bk, use_fused_bwd_kernel=True)
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((lp, lp)) for _ in range(g)])
    kernel = splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)
    dt = q_BxLxHxE.dtype
    q_BxKxGxLxE = (_pad_to(q_BxLxHxE, lp).astype(jnp.float32) * scale).astype(dt).reshape(
        b, lp, kv, g, e).transpose(0, 2, 3, 1, 4)
    k_BxKxSxE = _pad_to(k_BxSxKxE, lp).transpose(0, 2, 1, 3)
    v_BxKxSxE = _pad_to(v_BxSxKxE, lp).transpose(0, 2, 1, 3)
    seg_BxL = _pad_to(segment_ids_BxL.astype(jnp.int32), lp, -1)

    def one_row(q_KxGxLxE, k_KxSxE, v_KxSxE, seg_L):
        ids = splash.SegmentIds(q=seg_L, kv=seg_L)
        return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q_KxGxLxE, k_KxSxE, v_KxSxE)

    o_BxKxGxLxE = jax.vmap(one_row)(q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, seg_BxL)
    return o_BxKxGxLxE.transpose(0, 3, 1, 2, 4).reshape(b, lp, h, e)[:, :l].astype(dt)


# ------------------------------------------------------------------------------------ cudnn


def _cudnn_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, implementation):
    """jax.nn.dot_product_attention with is_causal and the segment equality as one [B, 1, L, S]
    boolean mask (every head and layer shares it). cuDNN wants even lengths when it has a bias
    (the mask becomes one): an odd length gets one padding position (segment -1, after every
    real query, so unseen)."""
    l = q_BxLxHxE.shape[1]
    lp = _round_up(l, 2)
    seg_BxL = _pad_to(segment_ids_BxL.astype(jnp.int32), lp, -1)
    same_Bx1xLxS = (seg_BxL[:, :, None] == seg_BxL[:, None, :])[:, None]
    o = jax.nn.dot_product_attention(_pad_to(q_BxLxHxE, lp), _pad_to(k_BxSxKxE, lp), _pad_to(v_BxSxKxE, lp),
                                     mask=same_Bx1xLxS, scale=scale, is_causal=True,
                                     implementation=implementation)
    return o[:, :l]


# ------------------------------------------------------------------------------------ sharding


def traced_mesh_batch_axes(n_rows: int):
    """(the mesh sizes by axis name, the batch axes ("data", "fsdp") of size > 1 that split
    `n_rows` rows) for the mesh the caller traces under; (None, ()) with no mesh or one device.
    The batch axes are () when they do not divide `n_rows`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None, ()
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    axes = tuple(a for a in ("data", "fsdp") if sizes.get(a, 1) > 1)
    return sizes, (axes if n_rows % math.prod(sizes[a] for a in axes) == 0 else ())


def _per_device_share(kernel, q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL):
    """Run `kernel` (a Pallas call, which XLA cannot partition: left alone, every device would
    compute the whole batch) on each device's own rows and heads. The mesh is the one the caller
    traces under (`jax.sharding.use_abstract_mesh`, as the train step does): rows split over its batch axes
    ("data", "fsdp"), heads over "tensor", each where it divides; no mesh, or one device: a
    plain call."""
    sizes, batch = traced_mesh_batch_axes(q_BxLxHxE.shape[0])
    if sizes is None:
        return kernel(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL)
    mesh = jax.sharding.get_abstract_mesh()
    t = sizes.get("tensor", 1)
    heads = "tensor" if t > 1 and k_BxSxKxE.shape[2] % t == 0 else None  # q heads then divide too
    rows = batch or None
    spec = jax.sharding.PartitionSpec(rows, None, heads, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec, jax.sharding.PartitionSpec(rows, None)),
                         out_specs=spec, check_vma=False)(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL)


# ------------------------------------------------------------------------------------ entry


def packed_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, *, impl: str,
                     scale: float | None = None, block_q: int = 512, block_k: int = 512):
    """Causal softmax attention within segments -> [B, L, H, E] in q's dtype.

    q [B, L, H, E] (not pre-scaled; `scale` defaults to 1/sqrt(E)); k, v [B, S, K, E] with S == L
    and H a multiple of K: query head h uses kv head h // (H // K). Key s is visible to query l
    iff s <= l and segment_ids[b, s] == segment_ids[b, l]. `impl`: 'blockwise', 'cudnn', 'pallas'
    or 'reference' ('auto' and 'plain' are resolved by the caller, see `resolve_attention`).
    Scores and softmax statistics are float32 whatever the input dtype. block_q/block_k are the
    blockwise tile (clamped to L); the kernels adapt them to their own constraints.
    """
    b, l, h, e = q_BxLxHxE.shape
    _, s, kv, _ = k_BxSxKxE.shape
    if s != l or v_BxSxKxE.shape != k_BxSxKxE.shape or h % kv or segment_ids_BxL.shape != (b, l):
        raise ValueError(f"packed_attention: q {q_BxLxHxE.shape}, k {k_BxSxKxE.shape}, "
                         f"v {v_BxSxKxE.shape}, segment ids {segment_ids_BxL.shape} do not fit")
    scale = 1.0 / math.sqrt(e) if scale is None else float(scale)
    backend = target_backend()
    if impl == "reference":
        return reference_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale)
    if impl == "blockwise":
        return _blockwise_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, block_q, block_k)
    if impl == "cudnn":
        if _CUDNN_IMPLEMENTATION == "cudnn":
            check_attention("cudnn", q_BxLxHxE.dtype, kv)
        return _cudnn_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, _CUDNN_IMPLEMENTATION)
    if impl == "pallas":
        resolve_attention("pallas", backend)
        platform = _PALLAS_INTERPRET if backend == "cpu" else backend
        kernel = functools.partial(_pallas_tpu if platform == "tpu" else _pallas_gpu, scale=scale,
                                   block_q=block_q, block_k=block_k, interpret=backend == "cpu")
        return _per_device_share(kernel, q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL)
    raise ValueError(f"packed_attention: impl {impl!r} is not one of blockwise, cudnn, pallas, reference "
                     "('auto' and 'plain' are resolved by the caller)")
