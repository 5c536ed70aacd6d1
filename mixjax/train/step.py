"""Per-domain losses and the jitted train / eval steps.

A `Stepper` holds one compiled train step and one eval step for a (model shape, batch shape,
optimizer, mesh) combination; `get_stepper` caches them so many runs in one process (sweeps,
mixing methods) compile once. The learning rate is a step input, so budgets and schedules do not
recompile. Train state = {"params": pure dict of float32 master weights, "opt": optax state}.

The train step also takes `loss_weights` [K]: all zeros trains on the mean token loss of the
batch; otherwise on sum_j loss_weights_j x (mean loss of domain j's tokens), the reweighted
objective of DoReMi's and DoGE's proxy runs (a step input too, so changing it never recompiles).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mixjax.data.batch import PackedBatch, next_token_targets
from mixjax.errors import MixjaxError
from mixjax.kernels.attention import check_attention
from mixjax.model.config import ModelConfig
from mixjax.model.decoder import Decoder, init_params
from mixjax.train import mesh as meshlib
from mixjax.train.config import TrainConfig
from mixjax.train.optim import adamw_direction

BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask", "domain_ids")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_compute_dtype(name: str, backend: str | None = None) -> str:
    """`compute_dtype` -> "float32" or "bfloat16". "auto": bfloat16 on GPU and TPU (their matmul
    units run it at several times float32's rate), float32 on CPU (where bfloat16 is slower,
    benchmarks/README.md). Master weights and optimizer state stay float32 either way."""
    from mixjax.kernels.platform import target_backend

    if name == "auto":
        return "bfloat16" if (backend or target_backend()) in ("gpu", "tpu") else "float32"
    if name not in DTYPES:
        raise MixjaxError(f"`compute_dtype` {name!r}: expected auto, {', '.join(DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything that changes the compiled step: the model, the batch shape, the number of domains
    and the TrainConfig settings of the same names (defaults: TrainConfig's)."""

    model: ModelConfig
    batch_size: int
    seq_len: int
    num_domains: int
    grad_accum: int = TrainConfig.grad_accum
    compute_dtype: str = TrainConfig.compute_dtype
    b1: float = TrainConfig.b1
    b2: float = TrainConfig.b2
    eps: float = TrainConfig.eps
    weight_decay: float = TrainConfig.weight_decay
    clip_norm: float | None = TrainConfig.clip_norm
    loss_chunk: int | None = TrainConfig.loss_chunk  # positions per cross-entropy chunk (None: all at once)

    @classmethod
    def of(cls, cfg: TrainConfig, model: ModelConfig, num_domains: int) -> "StepConfig":
        """The step of a training run: its model, its number of domains and `cfg`'s settings."""
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
                  if f.name not in ("model", "num_domains")}
        return cls(model=model, num_domains=num_domains, **shared)


def token_losses(logits_BxLxV, targets_BxL):
    """Cross-entropy of each position (float32)."""
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    lse_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
    tgt_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    return lse_BxL - tgt_BxL


def chunked_token_losses(hidden_BxLxD, head_DxV, targets_BxL, chunk: int):
    """`token_losses(hidden @ head, targets)` computed `chunk` positions at a time, recomputed in the
    backward pass, so the [B, L, V] logits (GBs for a 128k vocabulary) never exist at once."""
    from mixjax.model.decoder import project

    b, l, d = hidden_BxLxD.shape
    if l % chunk:
        raise ValueError(f"loss_chunk {chunk} must divide the sequence length {l}")
    n = l // chunk
    h_NxBxCxD = hidden_BxLxD.reshape(b, n, chunk, d).swapaxes(0, 1)
    t_NxBxC = targets_BxL.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(args):
        h_BxCxD, t_BxC = args
        return token_losses(project(h_BxCxD, head_DxV), t_BxC)

    return jax.lax.map(one, (h_NxBxCxD, t_NxBxC)).swapaxes(0, 1).reshape(b, l)


def domain_sums(values_BxL, domain_ids_BxL, num_domains: int):
    """Sum of `values` over the tokens of each domain [K] (domain -1 = padding, dropped).
    A one-hot contraction: cheaper than a scatter (segment_sum) on CPU for few domains."""
    onehot_BxLxK = jax.nn.one_hot(domain_ids_BxL, num_domains, dtype=jnp.float32)
    return jnp.einsum("bl,blk->k", values_BxL.astype(jnp.float32), onehot_BxLxK)


class Stepper:
    def __init__(self, cfg: StepConfig, mesh):
        self.cfg, self.mesh = cfg, mesh
        div = meshlib.batch_divisor(mesh)
        if cfg.batch_size % (div * cfg.grad_accum):
            raise MixjaxError(f"`batch_size` {cfg.batch_size} must be a multiple of data*fsdp ({div}) "
                              f"x `grad_accum` ({cfg.grad_accum})")
        if cfg.seq_len > cfg.model.max_seq_len:
            raise MixjaxError(f"`seq_len` {cfg.seq_len} exceeds the model's max_seq_len {cfg.model.max_seq_len}")
        if cfg.loss_chunk is not None and (cfg.loss_chunk < 1 or cfg.seq_len % cfg.loss_chunk):
            raise MixjaxError(f"`loss_chunk` {cfg.loss_chunk} must be a positive divisor of `seq_len` {cfg.seq_len}")
        self.compute_dtype = resolve_compute_dtype(cfg.compute_dtype)
        self.attention = check_attention(cfg.model.attention, DTYPES[self.compute_dtype], cfg.model.n_kv_heads,
                                         dict(mesh.shape))
        abstract = nnx.eval_shape(lambda: Decoder(cfg.model, rngs=nnx.Rngs(0)))
        self.graphdef, self._abstract_state = nnx.split(abstract, nnx.Param)
        abs_pure = nnx.to_pure_dict(self._abstract_state)
        spec_pure = nnx.to_pure_dict(nnx.get_partition_spec(self._abstract_state))
        self.param_shardings = meshlib.shardings_for(abs_pure, spec_pure, mesh)
        self.abstract_params = abs_pure
        self.tx = adamw_direction(cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, cfg.clip_norm)
        abs_opt = jax.eval_shape(self.tx.init, abs_pure)
        pdef = jax.tree.structure(abs_pure)
        repl = meshlib.replicated(mesh)
        opt_sh = jax.tree.map(
            lambda x: self.param_shardings if jax.tree.structure(x) == pdef else repl, abs_opt,
            is_leaf=lambda x: jax.tree.structure(x) == pdef)
        self.state_shardings = {"params": self.param_shardings, "opt": opt_sh}
        self.abstract_state = {"params": abs_pure, "opt": abs_opt}
        self.batch_sharding = meshlib.batch_sharding(mesh)
        bsh = {k: self.batch_sharding for k in BATCH_KEYS}
        self.train_step = jax.jit(self.under_mesh(self._train), in_shardings=(self.state_shardings, bsh, repl, repl),
                                  out_shardings=(self.state_shardings, repl), donate_argnums=0)
        self.eval_step = jax.jit(self.under_mesh(self._eval), in_shardings=(self.param_shardings, bsh), out_shardings=repl)
        # K stacked batches [K, B, L], each sharded like one batch (compiled on first use only)
        self.stacked_batch_sharding = NamedSharding(mesh, P(None, *self.batch_sharding.spec))
        self._init_params = None
        self._init_opt = jax.jit(self.tx.init, out_shardings=opt_sh)

    def under_mesh(self, fn):
        """`fn` traced with the (abstract) mesh set, so code that partitions by hand (a Pallas attention
        kernel under shard_map) sees the mesh; the axes stay Auto, so nothing else changes."""
        @functools.wraps(fn)
        def traced(*args):
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                return fn(*args)
        return traced

    # -- model <-> params ---------------------------------------------------------------------
    def merge(self, params) -> Decoder:
        """The Decoder holding `params` (a pure dict, as in the train state), matched by path."""
        state = jax.tree.map(lambda x: x, self._abstract_state)  # a copy to fill in
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def _init(self, key):
        return init_params(self.cfg.model, key)

    def init_params(self, seed: int = 0):
        """Random parameters, made directly in their shardings (no host copy of a big model)."""
        if self._init_params is None:  # random-number code is slow to optimise and runs once
            self._init_params = jax.jit(self._init, out_shardings=self.param_shardings).lower(
                jax.random.key(0)).compile({"xla_backend_optimization_level": 0})
        return self._init_params(jax.random.key(seed))

    def params_from_model(self, model: Decoder):
        pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), pure), self.param_shardings)

    def init_state(self, params):
        """{"params", "opt"} in their shardings. The train step donates its state: arrays passed
        here may be consumed by the first step (copy them first to keep using them)."""
        params = jax.device_put(params, self.param_shardings)
        return {"params": params, "opt": self._init_opt(params)}

    def put_batch(self, batch: PackedBatch | dict):
        """The global batch as arrays sharded over (data, fsdp). Multi-host: every process builds
        the same global batch (the sampler is deterministic) and contributes its own shards."""
        arrays = batch.arrays() if isinstance(batch, PackedBatch) else batch
        out = {}
        for k in BATCH_KEYS:
            a = np.asarray(arrays[k])
            a = a.astype(np.int32) if a.dtype != np.bool_ else a
            out[k] = jax.make_array_from_callback(a.shape, self.batch_sharding, lambda idx, a=a: a[idx])
        return out

    def put_stacked_batches(self, batches: list) -> dict:
        """K batches (PackedBatch or host arrays) as [K, B, L] device arrays, for
        `methods.doge.gradient_alignment` (batch k = the validation batch of domain k)."""
        arrays = [b.arrays() if isinstance(b, PackedBatch) else b for b in batches]
        out = {}
        for k in BATCH_KEYS:
            a = np.stack([np.asarray(x[k]) for x in arrays])
            a = a.astype(np.int32) if a.dtype != np.bool_ else a
            out[k] = jax.make_array_from_callback(a.shape, self.stacked_batch_sharding, lambda idx, a=a: a[idx])
        return out

    # -- the jitted functions -----------------------------------------------------------------
    def _sums(self, params, b):
        """(sum of token losses, per-domain loss sums [K], per-domain target counts [K])."""
        dtype = DTYPES[self.compute_dtype]
        if dtype != jnp.float32:
            params = jax.tree.map(lambda p: p.astype(dtype), params)
        model = self.merge(params)
        targets_BxL, w_BxL = next_token_targets(b["tokens"], b["segment_ids"], b["loss_mask"], xp=jnp)
        chunk = self.cfg.loss_chunk
        if chunk and chunk < b["tokens"].shape[1]:
            hidden_BxLxD = model.hidden(b["tokens"], b["positions"], b["segment_ids"], dtype=dtype)
            ce_BxL = chunked_token_losses(hidden_BxLxD, model.head_DxV(dtype), targets_BxL, chunk) * w_BxL
        else:
            logits_BxLxV = model(b["tokens"], b["positions"], b["segment_ids"], dtype=dtype)
            ce_BxL = token_losses(logits_BxLxV, targets_BxL) * w_BxL
        k = self.cfg.num_domains
        return jnp.sum(ce_BxL), domain_sums(ce_BxL, b["domain_ids"], k), domain_sums(w_BxL, b["domain_ids"], k)

    def no_loss_weights(self) -> np.ndarray:
        """The train step's `loss_weights` for the plain mean token loss."""
        return np.zeros(self.cfg.num_domains, np.float32)

    def _train(self, state, b, lr, loss_weights_K):
        params = state["params"]
        _, w_BxL = next_token_targets(b["tokens"], b["segment_ids"], b["loss_mask"], xp=jnp)
        denom = jnp.maximum(jnp.sum(w_BxL), 1.0)
        # per-token weight of each domain when reweighting: its weight over its targets in the whole
        # batch (so micro-batches of a gradient accumulation add up to the batch's objective)
        reweight = jnp.sum(loss_weights_K) > 0
        per_token_K = loss_weights_K / jnp.maximum(domain_sums(w_BxL, b["domain_ids"], self.cfg.num_domains), 1.0)

        def loss_fn(p, mb):
            total, dl, dw = self._sums(p, mb)
            return jnp.where(reweight, jnp.sum(dl * per_token_K), total / denom), (dl, dw)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        a = self.cfg.grad_accum
        if a == 1:
            (loss, (dl, dw)), grads = grad_fn(params, b)
        else:
            micro = jax.tree.map(lambda x: x.reshape(a, x.shape[0] // a, *x.shape[1:]), b)

            def body(carry, mb):
                (loss, (dl, dw)), g = grad_fn(params, mb)
                acc = jax.tree.map(jnp.add, carry, (loss, dl, dw, g))
                return acc, None

            zeros = jax.tree.map(jnp.zeros_like, (jnp.float32(0), jnp.zeros(self.cfg.num_domains),
                                                   jnp.zeros(self.cfg.num_domains), params))
            (loss, dl, dw, grads), _ = jax.lax.scan(body, zeros, micro)
        gnorm = optax.tree.norm(grads)
        direction, opt = self.tx.update(grads, state["opt"], params)
        params = jax.tree.map(lambda p, u: p - lr * u.astype(p.dtype), params, direction)
        metrics = {"loss": loss, "domain_loss_sum": dl, "domain_count": dw, "grad_norm": gnorm}
        return {"params": params, "opt": opt}, metrics

    def _eval(self, params, b):
        _, dl, dw = self._sums(params, b)
        return {"domain_loss_sum": dl, "domain_count": dw}

    def domain_means(self, params, b):
        """Each domain's mean token loss on the batch [K] (0 for a domain with no target)."""
        _, dl, dw = self._sums(params, b)
        return dl / jnp.maximum(dw, 1.0)


@functools.lru_cache(maxsize=16)
def get_stepper(cfg: StepConfig, mesh) -> Stepper:
    return Stepper(cfg, mesh)
