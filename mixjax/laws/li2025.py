"""Li, Liu, Xing (ICML 2025): power law in effective data, with data transferred from other domains.

    L_i(n) = C_i * (n_i + T_i) ** (-beta_i) + E_i,   T_i = min(k_i * m ** alpha_i, m),  m = sum_{j != i} n_j

The paper's constraint "transferred data never exceeds the real data of the other domains"
(k_i m^alpha_i <= m) is enforced *inside the law*: the transferred amount is capped at m. The
cap keeps every valid parameter set usable (a hand-written file with a large k still predicts
sensibly) and keeps the objective convex on the simplex: min(k m^alpha, m) is the minimum of two
concave functions of the weights, hence concave, so D_i is concave and C D^-beta convex.
Fitting happens in an unconstrained space: log C, log k, logit alpha, log beta, log E.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.laws import Law

_TINY = 1e-30


class Li2025Params(NamedTuple):
    C: jax.Array  # (K,) scale, > 0
    k: jax.Array  # (K,) transfer coefficient, >= 0
    alpha: jax.Array  # (K,) transfer exponent, in [0, 1]
    beta: jax.Array  # (K,) data exponent, >= 0
    E: jax.Array  # (K,) irreducible loss, >= 0


def transferred(k, alpha, m):
    """Effective data transferred from m tokens of other data: min(k m^alpha, m), NaN-free at m=0."""
    m_safe = jnp.maximum(m, _TINY)
    return jnp.minimum(k * jnp.exp(alpha * jnp.log(m_safe)), m)


def power_loss(C, beta, E, effective_data):
    """C * D^-beta + E."""
    return C * jnp.exp(-beta * jnp.log(effective_data)) + E


def domain_loss(p: Li2025Params, tokens_K, i):
    """Loss of domain i at tokens_K (token unit of the law)."""
    own = tokens_K[i]
    others = jnp.sum(tokens_K) - own
    return power_loss(p.C, p.beta, p.E, own + transferred(p.k, p.alpha, others))


def unpack(raw_P, K, i):
    """Unconstrained (log C, log k, logit alpha, log beta, log E) -> named parameters of domain i."""
    return Li2025Params(
        C=jnp.exp(raw_P[0]),
        k=jnp.exp(raw_P[1]),
        alpha=jax.nn.sigmoid(raw_P[2]),
        beta=jnp.exp(raw_P[3]),
        E=jnp.exp(raw_P[4]),
    )


def pack(p: Li2025Params, K, i):
    """Inverse of `unpack` (bounds nudged inward so every valid parameter has a finite image)."""
    alpha = jnp.clip(p.alpha, 1e-6, 1 - 1e-6)
    return jnp.stack(
        [
            jnp.log(jnp.maximum(p.C, 1e-12)),
            jnp.log(jnp.maximum(p.k, 1e-12)),
            jnp.log(alpha) - jnp.log1p(-alpha),
            jnp.log(jnp.maximum(p.beta, 1e-12)),
            jnp.log(jnp.maximum(p.E, 1e-12)),
        ]
    )


def fit_scale_for_start(beta, E, effective_data_R, losses_R, weights_R):
    """C that matches the weighted mean of (L - E) D^beta: a data-driven scale for a start."""
    scaled = (losses_R - E) * jnp.exp(beta * jnp.log(effective_data_R))
    C = jnp.sum(weights_R * scaled) / jnp.maximum(jnp.sum(weights_R), 1e-12)
    return jnp.maximum(C, 1e-6)


def min_observed(losses_R, weights_R):
    return jnp.min(jnp.where(weights_R > 0, losses_R, jnp.inf))


def random_raw(key, tokens_RxK, losses_R, weights_R, i):
    """A random start: exponents and transfer drawn wide, E below the lowest loss, C matched to data."""
    ka, kk, kb, ke = jax.random.split(key, 4)
    alpha = jax.random.uniform(ka, minval=0.1, maxval=0.9)
    k = jnp.exp(jax.random.uniform(kk, minval=jnp.log(0.05), maxval=jnp.log(2.0)))
    beta = jnp.exp(jax.random.uniform(kb, minval=jnp.log(0.05), maxval=jnp.log(1.5)))
    E = jax.random.uniform(ke, minval=0.05, maxval=0.95) * min_observed(losses_R, weights_R)
    own = tokens_RxK[:, i]
    D = own + transferred(k, alpha, jnp.sum(tokens_RxK, axis=1) - own)
    C = fit_scale_for_start(beta, E, D, losses_R, weights_R)
    K = tokens_RxK.shape[1]
    return pack(Li2025Params(C, k, alpha, beta, E), K, i)


def rescale(p: Li2025Params, r: float) -> Li2025Params:
    """Parameters for token counts r times larger that predict the same losses."""
    return p._replace(C=p.C * r**p.beta, k=p.k * r ** (1 - p.alpha))


def check(fields: dict) -> str | None:
    return check_bounds(fields)


def check_bounds(fields: dict) -> str | None:
    """One-line description of the first parameter outside its valid range, or None."""
    rules = {
        "C": (lambda v: v > 0, "> 0"),
        "k": (lambda v: v >= 0, ">= 0"),
        "alpha": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
        "beta": (lambda v: v >= 0, ">= 0"),
        "E": (lambda v: v >= 0, ">= 0"),
    }
    for name, (ok, text) in rules.items():
        if name in fields and not np.all(ok(np.asarray(fields[name]))):
            return f"params.{name} must be {text}, got {np.asarray(fields[name]).tolist()}"
    return None


LAW = Law(
    name="li2025",
    params_type=Li2025Params,
    field_shapes=lambda K: {f: (K,) for f in Li2025Params._fields},
    n_free=lambda K: 5,
    domain_loss=domain_loss,
    unpack=unpack,
    pack=pack,
    random_raw=random_raw,
    rescale=rescale,
    check=check,
    uses_proportions=False,
)
