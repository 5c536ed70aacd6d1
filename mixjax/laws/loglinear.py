"""Data Mixing Laws (Ye et al.), the static log-linear LMO law of Aioli, in mixture proportions p:

    L_i(p) = c_i + b_i * exp(-sum_j A_ij p_j),   p = tokens / sum(tokens)

The law sees proportions only, so its optimal weights do not depend on the budget. Because
sum_j p_j = 1, b_i is redundant with a shift of row A_i (b exp(-A.p) = exp(-(A - log b).p)): the
fit fixes b_i = 1 and moves log c_i and A_i (K + 1 free parameters per domain). Hand-written
files may use any b_i > 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.laws import Law
from mixjax.laws.li2025 import min_observed


class LogLinearParams(NamedTuple):
    c: jax.Array  # (K,) loss floor, > 0
    b: jax.Array  # (K,) scale, > 0
    A: jax.Array  # (K, K) A[i, j]: how training on j lowers the loss of i


def proportions(tokens_K):
    return tokens_K / jnp.sum(tokens_K)


def domain_loss(p: LogLinearParams, tokens_K, i):
    return p.c + p.b * jnp.exp(-jnp.dot(p.A, proportions(tokens_K)))


def unpack(raw_P, K, i):
    return LogLinearParams(c=jnp.exp(raw_P[0]), b=jnp.ones((), raw_P.dtype), A=raw_P[1:])


def pack(p: LogLinearParams, K, i):
    A = p.A - jnp.log(jnp.maximum(p.b, 1e-30))
    return jnp.concatenate([jnp.log(jnp.maximum(p.c, 1e-12))[None], A])


def random_raw(key, tokens_RxK, losses_R, weights_R, i):
    """c drawn below the lowest loss; A then from least squares on -log(L - c) = A.p."""
    kc, ka = jax.random.split(key)
    K = tokens_RxK.shape[1]
    c = jax.random.uniform(kc, minval=0.05, maxval=0.95) * min_observed(losses_R, weights_R)
    P_RxK = tokens_RxK / jnp.sum(tokens_RxK, axis=1, keepdims=True)
    target_R = -jnp.log(jnp.maximum(losses_R - c, 1e-6))
    W = weights_R[:, None]
    A = jnp.linalg.solve(P_RxK.T @ (W * P_RxK) + 1e-6 * jnp.eye(K), P_RxK.T @ (weights_R * target_R))
    A = A + 0.1 * jax.random.normal(ka, (K,), A.dtype)
    return jnp.concatenate([jnp.log(c)[None], A])


def check(fields: dict) -> str | None:
    for name in ("c", "b"):
        if not np.all(np.asarray(fields[name]) > 0):
            return f"params.{name} must be > 0, got {np.asarray(fields[name]).tolist()}"
    return None


LAW = Law(
    name="loglinear",
    params_type=LogLinearParams,
    field_shapes=lambda K: {"c": (K,), "b": (K,), "A": (K, K)},
    n_free=lambda K: K + 1,
    domain_loss=domain_loss,
    unpack=unpack,
    pack=pack,
    random_raw=random_raw,
    rescale=lambda p, r: p,
    check=check,
    uses_proportions=True,
)
