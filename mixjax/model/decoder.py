"""Flax NNX decoder of the Llama/Qwen2 family, segment-aware for packed batches.

Array names carry their shapes: B batch, L query length, S key length, D model dim, H query heads,
K key/value heads, G = H // K query heads per kv head, E head dim, F MLP hidden dim, V vocabulary.
Each parameter declares its sharding over the mesh axes ("data", "fsdp", "tensor") where it is made.
The attention implementations and the CPU custom VJPs the layers call live in `mixjax.kernels`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mixjax.kernels.attention import packed_attention, resolve_attention
from mixjax.kernels.cpu import matmul
from mixjax.kernels.plain import attention_mask, plain_attention
from mixjax.kernels.platform import traced_mesh_batch_axes
from mixjax.model.config import ModelConfig


def _param(init: str, shape, axes, stack: int | None = None, rngs: nnx.Rngs | None = None,
           std: float | None = None) -> nnx.Param:
    """A float32 parameter of `shape` sharded by `axes`, initialised by `init`: "normal" (standard
    deviation `std`, drawn from `rngs`), "ones" or "zeros". The parameter keeps `init` (and
    `init_std`) as metadata, the one statement of its initialisation that `init_params` reads back.
    With `stack`, `stack` of them along a new leading (layer) axis that is never sharded, as the
    scanned decoder keeps its layers."""
    if stack is not None:
        shape, axes = (stack, *shape), (None, *axes)
    if init == "normal":
        value = nnx.initializers.normal(std)(rngs.params(), shape, jnp.float32)
        return nnx.Param(value, init=init, init_std=std, out_sharding=axes, eager_sharding=False)
    return nnx.Param(_constant(init, shape, jnp.float32), init=init, out_sharding=axes, eager_sharding=False)


def _constant(init: str, shape, dtype):
    """The value of a parameter initialised by "ones" or "zeros"."""
    if init not in ("ones", "zeros"):
        raise ValueError(f"unknown initialiser {init!r} (normal, ones or zeros)")
    return (jnp.ones if init == "ones" else jnp.zeros)(shape, dtype)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [E/2] (float32), with the Llama-3 frequency scaling when configured."""
    e = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, e, 2, dtype=np.float64) / e))
    sc = cfg.rope_scaling_dict
    if sc and sc.get("rope_type", sc.get("type")) == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        lo_wl, hi_wl = old / lo, old / hi
        scaled = np.where(wavelen > lo_wl, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = ~(wavelen < hi_wl) & ~(wavelen > lo_wl)
        inv = np.where(is_mid, mid, scaled)
    elif sc and sc.get("rope_type", sc.get("type")) not in (None, "default"):
        raise ValueError(f"unsupported rope_scaling {sc!r}")
    return inv.astype(np.float32)


def rope_tables(positions_BxL, inv_freq, max_positions: int):
    """cos, sin [B, L, E/2] (float32) of the angles positions x inv_freq, gathered from constant
    tables instead of computed: XLA CPU fuses cos/sin into each consumer and so recomputes them for
    every head, in the forward and the backward pass (about 6% of the tiny preset's train step).

    A position p = q*S + r (S = ceil(sqrt(max_positions))) combines the tables of q*S and of r by
    the angle-addition formulas, so the tables stay small (two of ~sqrt(max_positions) rows) and
    agree with float64 evaluation to about 1e-7. Positions past the tables (from max_positions or
    a little beyond) give NaN rather than a wrong angle."""
    inv = np.asarray(inv_freq, np.float64)
    step = max(1, math.isqrt(max_positions - 1) + 1)
    n_coarse = -(-max_positions // step)
    coarse_QxE2 = np.arange(n_coarse, dtype=np.float64)[:, None] * step * inv
    fine_SxE2 = np.arange(step, dtype=np.float64)[:, None] * inv
    q_BxL, r_BxL = positions_BxL // step, positions_BxL % step

    def lookup(table, idx_BxL):
        return jnp.take(jnp.asarray(table, jnp.float32), idx_BxL, axis=0, mode="fill", fill_value=jnp.nan)

    cq, sq = lookup(np.cos(coarse_QxE2), q_BxL), lookup(np.sin(coarse_QxE2), q_BxL)
    cr, sr = lookup(np.cos(fine_SxE2), r_BxL), lookup(np.sin(fine_SxE2), r_BxL)
    return cq * cr - sq * sr, sq * cr + cq * sr


def apply_rope(x_xE, cos_xE2, sin_xE2):
    """Rotate-half RoPE (the HF convention), computed in float32; cos/sin broadcast against x
    without its last axis (x [..., E], cos/sin [..., E/2])."""
    dtype = x_xE.dtype
    x = x_xE.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos_xE2 - x2 * sin_xE2, x2 * cos_xE2 + x1 * sin_xE2], axis=-1).astype(dtype)


def project(x_BxLxD, w_Dx_):
    """x [B, L, D] times a weight [D, ...] (heads etc. flattened for the matmul) -> [B, L, ...].

    The matmul is `mixjax.kernels.cpu.matmul` (on CPU a weight gradient XLA CPU runs fast)."""
    b, l, d = x_BxLxD.shape
    out = matmul(x_BxLxD.reshape(b * l, d), w_Dx_.reshape(d, -1))
    # named so that remat policy "dots" keeps it (a policy on dot primitives would miss the CPU
    # path's custom VJP)
    out = checkpoint_name(out, "projection")
    return out.reshape(b, l, *w_Dx_.shape[1:])


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, stack: int | None = None):
        self.eps = eps
        self.weight = _param("ones", (dim,), (None,), stack)

    def __call__(self, x_BxLxD):
        x = x_BxLxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x_BxLxD.dtype) * x.astype(x_BxLxD.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: int | None = None):
        d, h, k, e = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        std = cfg.init_std
        self.n_heads, self.n_kv, self.head_dim = h, k, e
        self.attn_blocks = cfg.attn_blocks
        self.q_DxHxE = _param("normal", (d, h, e), ("fsdp", "tensor", None), stack, rngs, std)
        self.k_DxKxE = _param("normal", (d, k, e), ("fsdp", "tensor", None), stack, rngs, std)
        self.v_DxKxE = _param("normal", (d, k, e), ("fsdp", "tensor", None), stack, rngs, std)
        self.o_HxExD = _param("normal", (h, e, d), ("tensor", None, "fsdp"), stack, rngs, std)
        if cfg.qkv_bias:
            self.q_bias_HxE = _param("zeros", (h, e), ("tensor", None), stack)
            self.k_bias_KxE = _param("zeros", (k, e), ("tensor", None), stack)
            self.v_bias_KxE = _param("zeros", (k, e), ("tensor", None), stack)
        else:
            self.q_bias_HxE = self.k_bias_KxE = self.v_bias_KxE = None

    def __call__(self, x_BxLxD, cos, sin, mask: "AttentionMask"):
        if mask.impl == "plain":
            return self._plain(x_BxLxD, cos, sin, mask.keep_Bx1xSxL)
        dt = x_BxLxD.dtype
        b, l, d = x_BxLxD.shape
        q_BxLxHxE = project(x_BxLxD, self.q_DxHxE[...].astype(dt))
        k_BxSxKxE = project(x_BxLxD, self.k_DxKxE[...].astype(dt))
        v_BxSxKxE = project(x_BxLxD, self.v_DxKxE[...].astype(dt))
        if self.q_bias_HxE is not None:
            q_BxLxHxE = q_BxLxHxE + self.q_bias_HxE[...].astype(dt)
            k_BxSxKxE = k_BxSxKxE + self.k_bias_KxE[...].astype(dt)
            v_BxSxKxE = v_BxSxKxE + self.v_bias_KxE[...].astype(dt)
        cos_BxLx1xE2, sin_BxLx1xE2 = cos[:, :, None], sin[:, :, None]
        q_BxLxHxE = apply_rope(q_BxLxHxE, cos_BxLx1xE2, sin_BxLx1xE2)
        k_BxSxKxE = apply_rope(k_BxSxKxE, cos_BxLx1xE2, sin_BxLx1xE2)
        o_BxLxHxE = packed_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, mask.segment_ids_BxL, impl=mask.impl)
        return project(o_BxLxHxE.reshape(b, l, -1), self.o_HxExD[...].astype(dt).reshape(-1, d))

    def _plain(self, x_BxLxD, cos, sin, keep_Bx1xSxL):
        # Layout: queries as [B, K, G, L, E] so that, per (batch, kv head), the G query heads'
        # positions in a block are the M = G x C rows of ONE matmul against that kv head's keys
        # [S, E] (k/v are not repeated, and the score tensors need no transposes: XLA CPU spent
        # more time on the transposes of a [B, L, K, G, E] layout than on the matmuls).
        dt = x_BxLxD.dtype
        k_heads, e = self.n_kv, self.head_dim
        g = self.n_heads // k_heads
        d = x_BxLxD.shape[-1]
        b, l, _ = x_BxLxD.shape
        q = project(x_BxLxD, self.q_DxHxE[...].astype(dt)).reshape(b, l, k_heads, g, e).transpose(0, 2, 3, 1, 4)
        k = project(x_BxLxD, self.k_DxKxE[...].astype(dt)).transpose(0, 2, 1, 3)
        v = project(x_BxLxD, self.v_DxKxE[...].astype(dt)).transpose(0, 2, 1, 3)
        if self.q_bias_HxE is not None:
            q = q + self.q_bias_HxE[...].astype(dt).reshape(k_heads, g, 1, e)
            k = k + self.k_bias_KxE[...].astype(dt)[:, None, :]
            v = v + self.v_bias_KxE[...].astype(dt)[:, None, :]
        cos_Bx1x1xLxE2, sin_Bx1x1xLxE2 = cos[:, None, None], sin[:, None, None]
        q_BxKxGxLxE = apply_rope(q, cos_Bx1x1xLxE2, sin_Bx1x1xLxE2) * jnp.asarray(1.0 / math.sqrt(e), dt)
        k_BxKxSxE = apply_rope(k, cos_Bx1x1xLxE2[:, :, 0], sin_Bx1x1xLxE2[:, :, 0])
        o_BxKxGxLxE = plain_attention(q_BxKxGxLxE, k_BxKxSxE, v, keep_Bx1xSxL, self.query_blocks(l))
        o_BxLxHxE = o_BxKxGxLxE.transpose(0, 3, 1, 2, 4).reshape(b, l, k_heads * g * e)
        return project(o_BxLxHxE, self.o_HxExD[...].astype(dt).reshape(-1, d))

    def query_blocks(self, l: int) -> int:
        n = self.attn_blocks or max(1, min(8, l // 64))
        while l % n:
            n -= 1
        return n


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: int | None = None):
        d, f, std = cfg.dim, cfg.hidden_dim, cfg.init_std
        self.gate_DxF = _param("normal", (d, f), ("fsdp", "tensor"), stack, rngs, std)
        self.up_DxF = _param("normal", (d, f), ("fsdp", "tensor"), stack, rngs, std)
        self.down_FxD = _param("normal", (f, d), ("tensor", "fsdp"), stack, rngs, std)

    def __call__(self, x_BxLxD):
        dt = x_BxLxD.dtype
        gate = project(x_BxLxD, self.gate_DxF[...].astype(dt))
        up = project(x_BxLxD, self.up_DxF[...].astype(dt))
        return project(jax.nn.silu(gate) * up, self.down_FxD[...].astype(dt))


class Block(nnx.Module):
    """One decoder layer; with `stack`, all `stack` layers at once, every parameter with a leading
    layer axis (the decoder runs them by scanning over that axis)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: int | None = None):
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps, stack)
        self.attn = Attention(cfg, rngs, stack)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps, stack)
        self.mlp = MLP(cfg, rngs, stack)

    def __call__(self, x_BxLxD, cos, sin, mask: "AttentionMask"):
        x_BxLxD = x_BxLxD + self.attn(self.attn_norm(x_BxLxD), cos, sin, mask)
        return x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD))


def shard_over_batch(x_Bx_):
    """Constrain activations [B, ...] to be split by rows over the mesh's batch axes ("data",
    "fsdp"), when the caller traces under a mesh (the train step does). Without it XLA's
    propagation follows the fsdp-sharded embedding: the residual stream is split along D and
    [B*L, D] activations are all-gathered, so every device's memory grows with the global batch
    (llama-3.1-8b, fsdp 8, remat dots: 164 GiB per device against 45 GiB with it, `mixjax plan`)."""
    _, axes = traced_mesh_batch_axes(x_Bx_.shape[0])
    if not axes:
        return x_Bx_
    spec = jax.sharding.PartitionSpec(axes, *(None,) * (x_Bx_.ndim - 1))
    return jax.lax.with_sharding_constraint(x_Bx_, spec)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Who sees whom, in the form the chosen attention takes: the plain path's [B, 1, S, L]
    keep mask (built once for all layers), or just the segment ids for the blockwise kernels,
    which never build an S x S mask."""

    segment_ids_BxL: jax.Array
    keep_Bx1xSxL: jax.Array | None
    impl: str = dataclasses.field(metadata=dict(static=True))


REMAT_POLICY_FNS = {
    # save the layers' projections (q, k, v, o, gate, up, down: tagged in `project`), recompute
    # attention and the element-wise work in the backward
    "dots": lambda: jax.checkpoint_policies.save_only_these_names("projection"),
    # save only each layer's input
    "full": lambda: jax.checkpoint_policies.nothing_saveable,
}


class Decoder(nnx.Module):
    """Token ids [B, L] (with optional positions and segment ids for packing) -> logits [B, L, V].

    The layers are one `Block` whose parameters carry a leading layer axis [n_layers, ...]; the
    forward pass scans over it (`cfg.scanned`, so compile time does not grow with depth) or
    unrolls it, each layer under `cfg.remat`'s rematerialisation policy."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        v, d, std = cfg.vocab_size, cfg.dim, cfg.init_std
        self.embed_VxD = _param("normal", (v, d), ("tensor", "fsdp"), rngs=rngs, std=std)
        self.layers = Block(cfg, rngs, stack=cfg.n_layers)
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.lm_head_DxV = None if cfg.tie_embeddings else _param(
            "normal", (d, v), ("fsdp", "tensor"), rngs=rngs, std=std)

    def embed(self, tokens_BxL, dtype):
        table_VxD = self.embed_VxD[...].astype(dtype)
        if self.cfg.use_onehot_embed:
            # A one-hot matmul: its gradient is a matmul instead of a scatter-add (slow on CPU).
            return project(jax.nn.one_hot(tokens_BxL, self.cfg.vocab_size, dtype=dtype), table_VxD)
        return jnp.take(table_VxD, tokens_BxL, axis=0)

    def hidden(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None, dtype=None):
        """Final normalised hidden states [B, L, D]."""
        dtype = dtype or self.embed_VxD[...].dtype
        b, l = tokens_BxL.shape
        if positions_BxL is None:
            positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        if segment_ids_BxL is None:
            segment_ids_BxL = jnp.ones((b, l), jnp.int32)
        cos, sin = rope_tables(positions_BxL, rope_inv_freq(self.cfg), self.cfg.max_seq_len)
        impl = resolve_attention(self.cfg.attention, dtype=dtype)
        mask = AttentionMask(segment_ids_BxL, attention_mask(segment_ids_BxL) if impl == "plain" else None, impl)
        shard = shard_over_batch if self.cfg.shard_activations else (lambda x: x)
        x_BxLxD = shard(self.embed(tokens_BxL, dtype))
        x_BxLxD = self._layers(x_BxLxD, cos, sin, mask, shard)
        return shard(self.norm(x_BxLxD))

    def _layers(self, x_BxLxD, cos, sin, mask, shard):
        graphdef, stacked = nnx.split(self.layers)

        def layer(x_BxLxD, one_layer):
            x_BxLxD = nnx.merge(graphdef, one_layer)(shard(x_BxLxD), cos, sin, mask)
            return shard(x_BxLxD), None

        if self.cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICY_FNS[self.cfg.remat](),
                                   prevent_cse=not self.cfg.scanned)
        if self.cfg.scanned:
            return jax.lax.scan(layer, x_BxLxD, stacked)[0]
        for i in range(self.cfg.n_layers):
            x_BxLxD = layer(x_BxLxD, jax.tree.map(lambda a: a[i], stacked))[0]
        return x_BxLxD

    def head_DxV(self, dtype):
        if self.lm_head_DxV is None:
            return self.embed_VxD[...].astype(dtype).T
        return self.lm_head_DxV[...].astype(dtype)

    def __call__(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None, dtype=None):
        x_BxLxD = self.hidden(tokens_BxL, positions_BxL, segment_ids_BxL, dtype)
        return project(x_BxLxD, self.head_DxV(x_BxLxD.dtype)).astype(jnp.float32)


def init_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
    return Decoder(cfg, rngs=nnx.Rngs(seed))


def init_params(cfg: ModelConfig, key) -> dict:
    """Random parameters as the pure dict of `nnx.to_pure_dict(nnx.state(Decoder(cfg), nnx.Param))`,
    each initialised as the Decoder declares it (its `init` metadata, see `_param`), but with one
    random draw per distinct shape and standard deviation: XLA compiles each draw separately, so
    this compiles in a fraction of the time of initialising parameter by parameter (seconds on a
    CPU)."""
    abstract = nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    declared = nnx.to_flat_state(abstract)
    values = {path: None if param.init == "normal" else _constant(param.init, param.shape, param.dtype)
              for path, param in declared}
    drawn_together: dict[tuple, list] = {}  # (shape, std) -> paths of the normal parameters
    for path, param in declared:
        if param.init == "normal":
            drawn_together.setdefault((tuple(param.shape), param.init_std), []).append(path)
    for j, ((shape, std), paths) in enumerate(sorted(drawn_together.items())):
        draw = std * jax.random.normal(jax.random.fold_in(key, j), (len(paths), *shape), jnp.float32)
        for n, path in enumerate(paths):
            values[path] = draw[n]
    return nnx.to_pure_dict(nnx.from_flat_state(list(values.items())))
