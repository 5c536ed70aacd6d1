"""li2025 on *effective* own tokens: repeated data is worth less than fresh data.

    L_i(n) = C_i * (D_i(n_i) + T_i) ** (-beta_i) + E_i,   T_i = min(k_i m^alpha_i, m),  m = sum_{j != i} n_j
    D_i(n) = min(n, U_i) + U_i R*_i (1 - exp(-max(n - U_i, 0) / (U_i R*_i)))

U_i is domain i's unique training tokens: n tokens drawn from them are n / U_i passes, and the
passes beyond the first count as Muennighoff et al. (2023, data-constrained scaling) count them,
U + U R* (1 - exp(-R / R*)) with R = n / U - 1 repetitions (their fit: R* ~ 15). Below one pass
D_i = n (li2025 itself); far beyond it D_i saturates at U_i (1 + R*_i).

Only a domain's own tokens are discounted: the transfer term keeps li2025's m. Discounting a
source j's repetition would need its R*_j inside domain i's law, coupling the per-domain fits that
`fit` solves separately (or a K x K field of unique tokens); the transfer term is already
sub-linear in m (alpha <= 1) and capped at m, and the runs it is fitted on rarely repeat. What
stops a domain from being given a weight it cannot use is its own saturating loss.

Convexity on the simplex stays: D_i is concave and non-decreasing in n (slope 1 below U_i, then
exp(-(n - U_i) / (U_i R*)) <= 1, decreasing, continuous at U_i), the transfer term is li2025's
(concave), so the effective data is concave in w and C D^-beta convex.

`unique` is not fitted: `fit` takes it from `fixed={"unique": {domain: tokens}}` (the prepared
data's training tokens) and the law file stores it in the law's token unit, like every token
count; `R_star` is fitted per domain (started at 15; where no run repeats a domain the data say
nothing about it and it stays there) or fixed (`fixed={"R_star": 15}`).

Repetition-matched runs (li2025 `target_budget` T: a run of B tokens trains on B / T of each
domain's examples): `fixed={"match_budget": T}` makes the fit see each run's own unique tokens,
U_i x min(1, run total / T), so the runs, which repeat each domain as often as a run of T will,
identify R*. The law it writes is the plain li2025-repeat law with the full U_i: at the target
(total = T) the two are the same.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.errors import MixjaxError
from mixjax.laws import Law
from mixjax.laws.li2025 import check_bounds, fit_scale_for_start, min_observed, power_loss, transferred

R_STAR_START = 15.0  # Muennighoff et al.'s fitted R*_D (15.4)


class Li2025RepeatParams(NamedTuple):
    C: jax.Array  # (K,) scale, > 0
    k: jax.Array  # (K,) transfer coefficient, >= 0
    alpha: jax.Array  # (K,) transfer exponent, in [0, 1]
    beta: jax.Array  # (K,) data exponent, >= 0
    E: jax.Array  # (K,) irreducible loss, >= 0
    R_star: jax.Array  # (K,) repetitions at which a repeated token's value has decayed by 1/e, > 0
    unique: jax.Array  # (K,) unique training tokens (not fitted), > 0


def effective_tokens(n, unique, r_star):
    """Fresh-token equivalent of n tokens drawn from `unique` tokens (Muennighoff et al.)."""
    excess = jnp.maximum(n - unique, 0.0)
    return jnp.minimum(n, unique) - unique * r_star * jnp.expm1(-excess / (unique * r_star))


def domain_loss(p: Li2025RepeatParams, tokens_K, i):
    own = tokens_K[i]
    others = jnp.sum(tokens_K) - own
    own_effective = effective_tokens(own, p.unique, p.R_star)
    return power_loss(p.C, p.beta, p.E, own_effective + transferred(p.k, p.alpha, others))


def _needs_binding(*_args, **_kwargs):
    raise MixjaxError("law li2025-repeat needs each domain's unique training tokens to be fitted: "
                      "give the prepared data (--data DIR; `available` / fixed={'unique': ...} in Python)")


def rescale(p: Li2025RepeatParams, r: float) -> Li2025RepeatParams:
    """Parameters for token counts r times larger that predict the same losses."""
    return p._replace(C=p.C * r**p.beta, k=p.k * r ** (1 - p.alpha), unique=p.unique * r)


def check(fields: dict) -> str | None:
    problem = check_bounds(fields)
    if problem:
        return problem
    for name in ("R_star", "unique"):
        if name in fields and not np.all(np.asarray(fields[name]) > 0):
            return f"params.{name} must be > 0, got {np.asarray(fields[name]).tolist()}"
    return None


def bind(fixed: dict, token_scale: float) -> Law:
    """The law the fit moves: `unique` (tokens, (K,)) divided by the fit's internal `token_scale`,
    and `R_star` ((K,)) when given, filled in by `unpack`; the rest fitted as li2025's (log C,
    log k, logit alpha, log beta, log E), then log R* when it is fitted."""
    if "unique" not in fixed:
        _needs_binding()
    unique = np.asarray(fixed["unique"], np.float64) / float(token_scale)
    r_star = None if fixed.get("R_star") is None else np.asarray(fixed["R_star"], np.float64)
    match = fixed.get("match_budget")
    match = None if match is None else float(np.max(match)) / float(token_scale)
    return _bound(tuple(unique.tolist()), None if r_star is None else tuple(r_star.tolist()), match)


@dataclasses.dataclass(frozen=True)
class _Bound:
    unique: tuple  # internal token units
    r_star: tuple | None  # None: fitted
    match_budget: float | None = None  # internal token units; None: every run on all the data

    def domain_loss(self, p: Li2025RepeatParams, tokens_K, i):
        """The loss of a run on the data cut to min(1, its total / match_budget)."""
        if self.match_budget is None:
            return domain_loss(p, tokens_K, i)
        cut = jnp.minimum(1.0, jnp.sum(tokens_K) / self.match_budget)
        return domain_loss(p._replace(unique=p.unique * cut), tokens_K, i)

    def unpack(self, raw_P, K, i):
        r_star = jnp.exp(raw_P[5]) if self.r_star is None else jnp.asarray(self.r_star, raw_P.dtype)[i]
        return Li2025RepeatParams(
            C=jnp.exp(raw_P[0]), k=jnp.exp(raw_P[1]), alpha=jax.nn.sigmoid(raw_P[2]),
            beta=jnp.exp(raw_P[3]), E=jnp.exp(raw_P[4]), R_star=r_star,
            unique=jnp.asarray(self.unique, raw_P.dtype)[i])

    def pack(self, p: Li2025RepeatParams, K, i):
        alpha = jnp.clip(p.alpha, 1e-6, 1 - 1e-6)
        head = [jnp.log(jnp.maximum(p.C, 1e-12)), jnp.log(jnp.maximum(p.k, 1e-12)),
                jnp.log(alpha) - jnp.log1p(-alpha), jnp.log(jnp.maximum(p.beta, 1e-12)),
                jnp.log(jnp.maximum(p.E, 1e-12))]
        if self.r_star is None:
            head.append(jnp.log(jnp.maximum(p.R_star, 1e-12)))
        return jnp.stack(head)

    def random_raw(self, key, tokens_RxK, losses_R, weights_R, i):
        """li2025's random start on effective tokens, R* at Muennighoff's 15."""
        ka, kk, kb, ke = jax.random.split(key, 4)
        alpha = jax.random.uniform(ka, minval=0.1, maxval=0.9)
        k = jnp.exp(jax.random.uniform(kk, minval=jnp.log(0.05), maxval=jnp.log(2.0)))
        beta = jnp.exp(jax.random.uniform(kb, minval=jnp.log(0.05), maxval=jnp.log(1.5)))
        E = jax.random.uniform(ke, minval=0.05, maxval=0.95) * min_observed(losses_R, weights_R)
        unique = jnp.asarray(self.unique, tokens_RxK.dtype)[i]
        r_star = (jnp.asarray(R_STAR_START, tokens_RxK.dtype) if self.r_star is None
                  else jnp.asarray(self.r_star, tokens_RxK.dtype)[i])
        own, total = tokens_RxK[:, i], jnp.sum(tokens_RxK, axis=1)
        if self.match_budget is not None:
            unique = unique * jnp.minimum(1.0, total / self.match_budget)
        D = effective_tokens(own, unique, r_star) + transferred(k, alpha, total - own)
        C = fit_scale_for_start(beta, E, D, losses_R, weights_R)
        p = Li2025RepeatParams(C, k, alpha, beta, E, r_star, unique)
        return self.pack(p, tokens_RxK.shape[1], i)


@functools.lru_cache(maxsize=64)
def _bound(unique: tuple, r_star: tuple | None, match_budget: float | None) -> Law:
    """One Law object per set of fixed values, so the fit's compiled solves are reused."""
    b = _Bound(unique, r_star, match_budget)
    return dataclasses.replace(LAW, n_free=lambda K: 6 if r_star is None else 5, unpack=b.unpack, pack=b.pack,
                               random_raw=b.random_raw, domain_loss=b.domain_loss)


LAW = Law(
    name="li2025-repeat",
    params_type=Li2025RepeatParams,
    field_shapes=lambda K: {f: (K,) for f in Li2025RepeatParams._fields},
    n_free=lambda K: 6,
    domain_loss=domain_loss,
    unpack=_needs_binding,
    pack=_needs_binding,
    random_raw=_needs_binding,
    rescale=rescale,
    check=check,
    uses_proportions=False,
    fixed_fields=("unique",),
    bind=bind,
)
