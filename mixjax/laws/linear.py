"""The static linear LMO law (Aioli), in mixture proportions p:

    L_i(p) = c_i + b_i * (-sum_j A_ij p_j),   p = tokens / sum(tokens)

Since sum_j p_j = 1, c_i, b_i and a shift of row A_i are one degree of freedom: the fit fixes
b_i = 1 and makes each row of A sum to 0, so c_i is the predicted loss at the uniform mixture
(K free parameters per domain). Its objective is linear: the optimum is a vertex of the feasible
set (bounds and caps decide which). Hand-written files may use any c, b, A.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.laws import Law


class LinearParams(NamedTuple):
    c: jax.Array  # (K,)
    b: jax.Array  # (K,) >= 0
    A: jax.Array  # (K, K)


def domain_loss(p: LinearParams, tokens_K, i):
    return p.c - p.b * jnp.dot(p.A, tokens_K / jnp.sum(tokens_K))


def unpack(raw_P, K, i):
    v = raw_P[1:]
    A = jnp.concatenate([v, -jnp.sum(v, keepdims=True)])
    return LinearParams(c=raw_P[0], b=jnp.ones((), raw_P.dtype), A=A)


def pack(p: LinearParams, K, i):
    scaled = p.b * p.A
    shift = jnp.mean(scaled)
    return jnp.concatenate([(p.c - shift)[None], (scaled - shift)[: K - 1]])


def random_raw(key, tokens_RxK, losses_R, weights_R, i):
    K = tokens_RxK.shape[1]
    mean = jnp.sum(weights_R * losses_R) / jnp.maximum(jnp.sum(weights_R), 1e-12)
    return jnp.concatenate([mean[None], 0.01 * jax.random.normal(key, (K - 1,), losses_R.dtype)])


def check(fields: dict) -> str | None:
    if not np.all(np.asarray(fields["b"]) >= 0):
        return f"params.b must be >= 0, got {np.asarray(fields['b']).tolist()}"
    return None


LAW = Law(
    name="linear",
    params_type=LinearParams,
    field_shapes=lambda K: {"c": (K,), "b": (K,), "A": (K, K)},
    n_free=lambda K: K,
    domain_loss=domain_loss,
    unpack=unpack,
    pack=pack,
    random_raw=random_raw,
    rescale=lambda p, r: p,
    check=check,
    uses_proportions=True,
)
