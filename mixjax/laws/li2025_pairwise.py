"""li2025 with a transfer coefficient and exponent per (target, source) pair.

    L_i(n) = C_i * (n_i + sum_{j != i} min(k_ij n_j^alpha_ij, n_j)) ** (-beta_i) + E_i

Each source's transfer is capped at its own real data (the li2025 constraint, per pair); the
objective stays convex on the simplex for the same reason as li2025. 3 + 2 (K - 1) free
parameters per domain, so it needs more runs than li2025. Diagonal entries of k and alpha are
unused (written as 0). Fit space: log C, log beta, log E, log k_ij, logit alpha_ij.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mixjax.laws import Law, other_indices
from mixjax.laws.li2025 import (
    check_bounds,
    fit_scale_for_start,
    min_observed,
    power_loss,
    transferred,
)


class Li2025PairwiseParams(NamedTuple):
    C: jax.Array  # (K,)
    k: jax.Array  # (K, K) k[i, j]: transfer from source j to target i, >= 0
    alpha: jax.Array  # (K, K) in [0, 1]
    beta: jax.Array  # (K,)
    E: jax.Array  # (K,)


def domain_loss(p: Li2025PairwiseParams, tokens_K, i):
    """Loss of domain i; p.k and p.alpha are domain i's rows (K,)."""
    K = tokens_K.shape[0]
    from_sources = transferred(p.k, p.alpha, tokens_K) * (1 - jax.nn.one_hot(i, K))
    return power_loss(p.C, p.beta, p.E, tokens_K[i] + jnp.sum(from_sources))


def unpack(raw_P, K, i):
    others = other_indices(K, i)
    k_row = jnp.zeros(K, raw_P.dtype).at[others].set(jnp.exp(raw_P[3 : 3 + K - 1]))
    alpha_row = jnp.zeros(K, raw_P.dtype).at[others].set(jax.nn.sigmoid(raw_P[3 + K - 1 :]))
    return Li2025PairwiseParams(
        C=jnp.exp(raw_P[0]), k=k_row, alpha=alpha_row, beta=jnp.exp(raw_P[1]), E=jnp.exp(raw_P[2])
    )


def pack(p: Li2025PairwiseParams, K, i):
    others = other_indices(K, i)
    alpha = jnp.clip(p.alpha[others], 1e-6, 1 - 1e-6)
    head = jnp.stack(
        [jnp.log(jnp.maximum(v, 1e-12)) for v in (p.C, p.beta, p.E)]
    )
    return jnp.concatenate(
        [head, jnp.log(jnp.maximum(p.k[others], 1e-12)), jnp.log(alpha) - jnp.log1p(-alpha)]
    )


def random_raw(key, tokens_RxK, losses_R, weights_R, i):
    K = tokens_RxK.shape[1]
    ka, kk, kb, ke = jax.random.split(key, 4)
    alpha = jax.random.uniform(ka, (K,), minval=0.1, maxval=0.9)
    k = jnp.exp(jax.random.uniform(kk, (K,), minval=jnp.log(0.05), maxval=jnp.log(2.0)))
    beta = jnp.exp(jax.random.uniform(kb, minval=jnp.log(0.05), maxval=jnp.log(1.5)))
    E = jax.random.uniform(ke, minval=0.05, maxval=0.95) * min_observed(losses_R, weights_R)
    mask = 1 - jax.nn.one_hot(i, K)
    D = tokens_RxK[:, i] + jnp.sum(transferred(k, alpha, tokens_RxK) * mask, axis=1)
    C = fit_scale_for_start(beta, E, D, losses_R, weights_R)
    return pack(Li2025PairwiseParams(C, k, alpha, beta, E), K, i)


def rescale(p: Li2025PairwiseParams, r: float) -> Li2025PairwiseParams:
    return p._replace(C=p.C * r**p.beta, k=p.k * r ** (1 - p.alpha))


LAW = Law(
    name="li2025-pairwise",
    params_type=Li2025PairwiseParams,
    field_shapes=lambda K: {"C": (K,), "k": (K, K), "alpha": (K, K), "beta": (K,), "E": (K,)},
    n_free=lambda K: 3 + 2 * (K - 1),
    domain_loss=domain_loss,
    unpack=unpack,
    pack=pack,
    random_raw=random_raw,
    rescale=rescale,
    check=check_bounds,
    uses_proportions=False,
)
