"""Causal attention over packed sequences: which implementation runs, and the one entry to them.

A row of the batch holds several documents back to back, told apart by segment ids; a query sees
the keys at or before it in its own segment (padding, id 0, is a segment like any other, so every
query sees at least itself). Query head h reads kv head h // (H // K) (grouped-query attention,
the HF repeat_kv convention). Everything here is a pure function of arrays.

The implementations are listed once in `mixjax.kernels.registry` (names, backends, 'auto'); each
has its own module: `blockwise` (pure JAX, flash-attention 2), `pallas` (our Triton GQA kernel on
GPU, splash on TPU), `cudnn` (jax.nn.dot_product_attention) and `plain` (the decoder's textbook
form, called by the layer itself, not through `packed_attention`); ``reference`` is the textbook
form for tests (`reference_attention`). Pallas calls are custom calls that XLA does not partition:
under a multi-device mesh every device would compute the whole batch (correct but wasteful), so
they run on each device's share under shard_map (`_per_device_share`), and 'auto' picks splash
only on a single TPU device.

'auto' (`resolve_attention`, the rule in `registry.auto_choice`): cpu -> 'plain'; gpu -> 'pallas'
(the Triton kernel: segment ids natively, no score-sized array in either pass, run on each device's
share under shard_map, and its CUDA lowering is tested on every commit, tests/test_lowering.py;
'cudnn' stays explicit: with packed segments its public API takes a dense [B, 1, L, S] mask whose
bias gradient it computes every layer, and it cannot be lowered here without cuDNN); tpu ->
'pallas' (splash) on a single device, else 'blockwise'. Which is fastest on an H100 is unmeasured:
`benchmarks/bench_gpu.py` times all of them first.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from mixjax.errors import MixjaxError
from mixjax.kernels import registry
from mixjax.kernels.blockwise import blockwise_attention
from mixjax.kernels.cudnn import cudnn_attention, cudnn_status
from mixjax.kernels.pallas import pallas_gpu, pallas_tpu
from mixjax.kernels.platform import target_backend, traced_mesh_batch_axes

# Test switches. _PALLAS_INTERPRET: None, "gpu" or "tpu": on the cpu backend, run that platform's
# Pallas kernel in interpret mode (slow; tests only). _CUDNN_IMPLEMENTATION: "xla" runs the cudnn
# path's exact call with jax.nn's XLA implementation, which any backend has.
_PALLAS_INTERPRET: str | None = None
_CUDNN_IMPLEMENTATION = "cudnn"

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


# ------------------------------------------------------------------------------------ selection


def _device_count(backend: str) -> int:
    """Devices of `backend` (all devices of every process), or of the default one if it is absent."""
    try:
        return jax.device_count(backend)
    except RuntimeError:
        return jax.device_count()


def _available(backend: str) -> tuple[str, ...]:
    """The explicit implementations this backend runs, in the registry's order: its native ones,
    less cudnn where cuDNN is missing, plus pallas on the CPU while `_PALLAS_INTERPRET` is set."""
    native = registry.native(backend)
    if "cudnn" in native and cudnn_status() is not None:
        native = tuple(n for n in native if n != "cudnn")
    if backend == "cpu" and _PALLAS_INTERPRET:
        native += ("pallas",)
    return native


def resolve_attention(impl: str, backend: str | None = None, dtype=None) -> str:
    """`--attention` value -> the implementation to run on `backend` (None: the target backend).

    'auto': `registry.auto_choice` (cpu -> 'plain'; gpu -> 'pallas'; tpu -> 'pallas' (splash) on
    one device, else 'blockwise'). `dtype` (the compute dtype) is checked by `check_attention`. An
    explicit implementation the backend cannot run raises a one-line MixjaxError naming what it has.
    """
    backend = backend or target_backend()
    registry.check_name(impl)
    if impl == "auto":
        return registry.auto_choice(backend, _device_count(backend))
    available = _available(backend)
    if impl not in available:
        why = ""
        if impl == "cudnn" and backend == "gpu":
            why = f" ({cudnn_status()})"
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


# ------------------------------------------------------------------------------------ sharding


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
        return blockwise_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, block_q, block_k)
    if impl == "cudnn":
        if _CUDNN_IMPLEMENTATION == "cudnn":
            check_attention("cudnn", q_BxLxHxE.dtype, kv)
        return cudnn_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, _CUDNN_IMPLEMENTATION)
    if impl == "pallas":
        resolve_attention("pallas", backend)
        platform = _PALLAS_INTERPRET if backend == "cpu" else backend
        kernel = functools.partial(pallas_tpu if platform == "tpu" else pallas_gpu, scale=scale,
                                   block_q=block_q, block_k=block_k, interpret=backend == "cpu")
        return _per_device_share(kernel, q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL)
    raise ValueError(f"packed_attention: impl {impl!r} is not one of blockwise, cudnn, pallas, reference "
                     "('auto' and 'plain' are resolved by the caller)")
