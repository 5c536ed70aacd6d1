"""Adaptive perturbation design: which run to train next, and when the optimum is known.

li2025's Algorithm 1 trains a fixed 1 + 4K runs. Here the runs come one (or a few) at a time:

0. `initial_runs`: a small spread-out start that identifies the law: the uniform base run and
   spread-out mixtures until the fit's rule holds (6 runs for li2025 at any K: n_free + 1).
1. `assess` fits the law to the runs so far and measures how uncertain the optimal weights at
   the target budget are: the 90% interval (5th-95th percentile) of every weight.
2. `should_stop`: stop when every weight's interval is narrower than a tolerance (default 0.02).
3. Otherwise `candidate_runs` lists li2025's perturbation family around the *current* estimate
   of the optimum (the base run's per-domain tokens n scaled to the estimated optimal mixture,
   each domain x 0.25, 0.5, 2, 3 with the others kept), a few mixtures near the optimum and 4K
   spread-out mixtures (Dirichlet(1), 0.5x-2x the base total, seeded by the observed run names),
   and `propose_next` picks the candidate(s) that most reduce the variance of the optimal weights
   (default, criterion="weights") or most increase log det of the Fisher information of the law's
   parameters (criterion="d-optimal").

Choices, and why:

- **The Fisher information.** With Gaussian noise of one size on every loss, the Fisher
  information of domain i's free parameters theta_i (the law's unconstrained vector: log C,
  log k, logit alpha, log beta, log E for li2025) is F_i = J_i^T J_i / sigma^2, J_i the Jacobian of
  domain i's predicted loss at the observed runs (jax.jacfwd at the fitted parameters). A new run
  adds one row g_i to every domain's J_i (every run measures every domain). F gets a tiny ridge
  (1e-13 of its largest diagonal entry; F from a few runs often has a condition number of 1e9-1e10,
  so a larger ridge would change the ranking) so that a singular F (a parameter the runs do not
  see) still ranks candidates: the ones that see it win. Several runs are chosen greedily (each
  pick updates F); no criterion needs a refit, and none depends on sigma.
- **The default criterion targets the optimal weights (A-optimal on w*, by the delta method).**
  What the design is for is w*, not theta, and parameters matter very unequally to it. With
  G_i = d w*/d theta_i (K x P, `weight_jacobian`: central differences through the compiled
  optimiser, all 2 K P perturbed parameter sets in one call), Var(w*) ~ s^2 sum_i G_i F_i^-1 G_i^T
  (the domains are fitted apart, with independent noise). A run lowers its trace by
  sum_i ||G_i F_i^-1 g_i||^2 / (1 + g_i^T F_i^-1 g_i) (Sherman-Morrison, `weight_variance_reduction`).
  The trace is the summed variance of the K weights; that they sum to 1 only makes G's columns sum
  to 0. Where G is not finite or no candidate lowers the trace (an optimum at a vertex, whose
  weights do not move) the pick falls back to D-optimal.
- **D-optimal** (criterion="d-optimal"): gain sum_i log(1 + g_i^T F_i^-1 g_i), the log det
  increase of F (matrix determinant lemma). It shrinks the parameters' confidence region as a
  whole, whether or not a parameter moves the optimum.
- **A small start and spread-out candidates.** The start spends the fewest runs the fit allows, so
  that the adaptive choice decides the rest; its mixtures, and the spread-out candidates, vary every
  domain's tokens and the others' total at once (in experiments/adaptive_design.py, random
  Dirichlet runs estimated w* better than li2025's one-domain perturbations with fewer runs at K = 6).
- **Uncertainty of the weights.** `method="laplace"` (default): the Gaussian approximation of the
  fit, theta_i ~ theta_hat_i + s^2 F_i^-1-shaped noise with s^2 the residual variance pooled over
  domains, drawn as multivariate t with the residual degrees of freedom (as few as K at the
  smallest start, so the uncertainty of s^2 itself counts), `n_boot` times, and mapped to optimal
  weights by the fit's bootstrap solver (the same compiled, vmapped optimiser `mixjax fit --budget`
  uses). It is consistent with the design criterion and deterministic for a seed.
  `method="bootstrap"`: `fit`'s own bootstrap (resampling runs, refitting each resample); with few
  runs a resample often holds fewer distinct runs than the law has parameters, so its intervals
  are then very wide and noisy - which is why it is not the default for a design that starts from
  a handful of runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.base import ProposedRun
from mixjax.methods.li2025_design import DEFAULT_FACTORS

DEFAULT_TOLERANCE = 0.02
NEAR_FACTORS = (1.5, 1 / 1.5)  # one domain's weight x these (renormalised), at the base total
SCALE_FACTORS = (0.5, 2.0)  # the estimated optimum itself at these multiples of the base total
SPREAD_TOTALS = (0.5, 2.0)  # spread-out runs: totals log-uniform in this range x the base total
WEIGHT_EPS = 1e-3  # central-difference step of `weight_jacobian` (unconstrained parameters)
CRITERIA = ("weights", "d-optimal")


@dataclasses.dataclass
class Assessment:
    """The current fit, its optimal weights at the budget and their 90% intervals."""

    fitted: object  # FittedLaw
    domains: list[str]
    budget_tokens: float
    weights: np.ndarray  # (K,) optimal weights of the fit
    p05: np.ndarray  # (K,)
    p95: np.ndarray  # (K,)
    method: str
    n_samples: int  # finite samples behind the interval

    @property
    def widths(self) -> np.ndarray:
        return self.p95 - self.p05


# -- identifiability -------------------------------------------------------------------------------

def identification_problems(observations, law) -> list[str]:
    """Why the runs cannot identify `law` (one phrase per domain, saying which runs would), or [].

    Per domain i, over the runs that measure its loss: at least n_free + 1 distinct token
    settings (the fit's rule, counting distinct settings, not repeats); for laws of token counts
    (li2025), at least 3 distinct values of domain i's own tokens (C, beta, E of its power law) and
    at least 2 of the other domains' total (the transfer terms k, alpha)."""
    return _design_problems(observations.domains, observations.tokens, observations.observed, law)


def _design_counts(domains, tokens_RxK, observed_RxK, law):
    """Per domain: (distinct own tokens, distinct totals of the others, distinct settings) of the
    runs that measure it."""
    for j, d in enumerate(domains):
        tokens = np.asarray(tokens_RxK, np.float64).reshape(-1, len(domains))[np.asarray(observed_RxK)[:, j]]
        own = _distinct(tokens[:, j])
        others = _distinct(tokens.sum(axis=1) - tokens[:, j])
        if law.uses_proportions:
            props = tokens / tokens.sum(axis=1, keepdims=True)
            settings = len({tuple(np.round(p, 9)) for p in props})
        else:
            settings = len({tuple(np.round(t / max(tokens.max(initial=0.0), 1.0), 9)) for t in tokens})
        yield d, own, others, settings


def _design_deficit(domains, tokens_RxK, observed_RxK, law) -> int:
    """How many distinct values and settings the runs lack before they identify `law`: 0 when
    `_design_problems` has none."""
    n_free, observed = law.n_free(len(domains)), observed_RxK
    token_law = not law.uses_proportions
    return sum(max(0, n_free + 1 - settings) + token_law * (max(0, 3 - own) + max(0, 2 - others))
               for _, own, others, settings in _design_counts(domains, tokens_RxK, observed, law))


def _design_problems(domains, tokens_RxK, observed_RxK, law) -> list[str]:
    """`identification_problems` of a design: tokens (R, K) and which losses are measured (R, K)."""
    n_free = law.n_free(len(domains))
    problems = []
    for d, own, others, settings in _design_counts(domains, tokens_RxK, observed_RxK, law):
        hints = []
        if not law.uses_proportions and own < 3:
            hints.append(f"add runs that vary domain {d}'s tokens ({own} distinct value(s); e.g. {d} x0.5 and x2)")
        if not law.uses_proportions and others < 2:
            hints.append(f"add runs that vary the tokens of the domains other than {d} (e.g. keep {d} and scale the others x2)")
        if settings < n_free + 1:
            hints.append(f"add at least {n_free + 1 - settings} run(s) with new token counts")
        if hints:
            problems.append(f"{d}: {settings} distinct run(s) for {n_free} free parameters: " + "; ".join(hints))
    return problems


def _distinct(values) -> int:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return 0
    scale = max(float(np.max(np.abs(values))), 1.0)
    return len(np.unique(np.round(values / scale, 9)))


def check_identifiable(observations, law) -> None:
    """A one-line MixjaxError naming the runs that would identify the law, if the runs do not."""
    problems = identification_problems(observations, law)
    if problems:
        raise MixjaxError(f"the runs do not identify law {law.name}: " + " | ".join(problems))


# -- fit, uncertainty, stopping -------------------------------------------------------------------

def _fit(observations, law, budget_tokens, fit_options, token_unit, n_boot=0, seed=0):
    from mixjax.fit import FitOptions, fit

    check_identifiable(observations, law)
    options = fit_options or FitOptions(n_starts=16, leave_one_out=False)
    options = dataclasses.replace(options, n_bootstrap=n_boot, seed=seed, leave_one_out=False)
    fitted = fit(law, observations, token_unit=token_unit, budgets=[budget_tokens] if n_boot else (),
                 options=options)
    if fitted.diagnostics.get("under_determined"):
        hints = identification_problems(observations, law)
        raise MixjaxError(f"the runs do not identify law {law.name}: "
                          + (" | ".join(hints) if hints else fitted.diagnostics["message"]))
    return fitted


def raw_params(fitted) -> np.ndarray:
    """The fitted parameters as the law's unconstrained vectors (K, P), in the fit's token unit."""
    import jax
    import jax.numpy as jnp

    from mixjax.laws import domain_params

    K = len(fitted.domains)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), fitted.params)
        return np.stack([np.asarray(fitted.law.pack(domain_params(params, i), K, i)) for i in range(K)])


def loss_jacobians(fitted, tokens_RxK) -> np.ndarray:
    """d loss_i / d theta_i (R, K, P) at runs of `tokens_RxK` (tokens), theta_i the unconstrained
    parameters of domain i at the fit (jax.jacfwd of the law's per-domain loss)."""
    import jax
    import jax.numpy as jnp

    K = len(fitted.domains)
    raw = raw_params(fitted)
    tokens = np.asarray(tokens_RxK, np.float64).reshape(-1, K) / fitted.token_unit
    if not len(tokens):
        return np.zeros((0, K, raw.shape[1]))
    with jax.enable_x64(True):
        return np.asarray(_jacobian_fn(fitted.law, K)(jnp.asarray(raw), jnp.asarray(tokens)))


@functools.lru_cache(maxsize=None)
def _jacobian_fn(law, K):
    import jax
    import jax.numpy as jnp

    def row(raw_P, t_K, i):
        return jax.jacfwd(lambda r: law.domain_loss(law.unpack(r, K, i), t_K, i))(raw_P)

    per_domain = jax.vmap(row, in_axes=(0, None, 0))
    return jax.jit(lambda raw, tokens: jax.vmap(lambda t: per_domain(raw, t, jnp.arange(K)))(tokens))


def fisher(jac_RxKxP, observed_RxK=None) -> np.ndarray:
    """J_i^T J_i per domain (K, P, P), over the runs where domain i's loss was measured."""
    jac = np.asarray(jac_RxKxP, np.float64)
    if observed_RxK is not None:
        jac = jac * np.asarray(observed_RxK, np.float64)[:, :, None]
    return np.einsum("rkp,rkq->kpq", jac, jac)


def _ridge(F_KxPxP, rel: float = 1e-13) -> np.ndarray:
    P = F_KxPxP.shape[-1]
    diag = np.max(np.diagonal(F_KxPxP, axis1=1, axis2=2), axis=1)
    eps = rel * np.maximum(diag, 1e-300)
    return F_KxPxP + eps[:, None, None] * np.eye(P)[None]


def log_det_gain(F_KxPxP, rows_KxP) -> float:
    """log det(F_i + g_i g_i^T) - log det F_i, summed over domains (matrix determinant lemma)."""
    F = _ridge(np.asarray(F_KxPxP, np.float64))
    g = np.asarray(rows_KxP, np.float64)
    q = np.einsum("kp,kp->k", g, np.linalg.solve(F, g[..., None])[..., 0])
    return float(np.sum(np.log1p(np.maximum(q, 0.0))))


def weight_variance(F_KxPxP, G_KxKxP) -> float:
    """trace sum_i G_i F_i^-1 G_i^T: the delta-method variance of the optimal weights, summed over
    weights, in units of the noise variance s^2 (F ridged as in `log_det_gain`)."""
    F = _ridge(np.asarray(F_KxPxP, np.float64))
    G = np.asarray(G_KxKxP, np.float64)
    X = np.linalg.solve(F, np.swapaxes(G, 1, 2))  # (K, P, K): F_i^-1 G_i^T
    return float(np.einsum("iwp,ipw->", G, X))


def weight_variance_reduction(F_KxPxP, G_KxKxP, rows) -> np.ndarray | float:
    """How much one more run with Jacobian rows g (K, P), or each of C runs (C, K, P), lowers
    `weight_variance`: sum_i ||G_i F_i^-1 g_i||^2 / (1 + g_i^T F_i^-1 g_i) (Sherman-Morrison)."""
    F = _ridge(np.asarray(F_KxPxP, np.float64))
    G = np.asarray(G_KxKxP, np.float64)
    g = np.asarray(rows, np.float64)
    single = g.ndim == 2
    g = g[None] if single else g
    Finv = np.linalg.inv(F)
    Finv = 0.5 * (Finv + np.swapaxes(Finv, 1, 2))
    u = np.einsum("ipq,ciq->cip", Finv, g)  # F_i^-1 g_i
    q = np.einsum("cip,cip->ci", g, u)
    v = np.einsum("iwp,cip->ciw", G, u)  # G_i F_i^-1 g_i
    out = np.sum(np.einsum("ciw,ciw->ci", v, v) / (1.0 + np.maximum(q, 0.0)), axis=1)
    return float(out[0]) if single else out


def weight_jacobian(fitted, budget_tokens, eps: float = WEIGHT_EPS) -> np.ndarray:
    """G (K, K, P): G[i] = d w* / d theta_i, the optimal weights at `budget_tokens` against domain i's
    unconstrained parameters at the fit, by central differences (theta +/- eps e_j, all 2 K P
    coordinates in one call of the compiled optimiser). The parameters are logs and a logit, so one
    eps suits them all; 1e-3 keeps the O(eps^2) error and the solver's (tol 1e-10) far below the
    derivative (the tests: within ~1e-6 of the implicit-function-theorem derivative, and of eps
    2e-4). Each G[i][:, p] sums to ~0 over the weights (they stay on the simplex)."""
    raw = raw_params(fitted)
    K, P = raw.shape
    draws = np.repeat(raw[None], 2 * K * P, axis=0)
    for i in range(K):
        for p in range(P):
            draws[2 * (i * P + p), i, p] += eps
            draws[2 * (i * P + p) + 1, i, p] -= eps
    w = optimal_weights_of(fitted.law, draws, budget_tokens / fitted.token_unit)  # (2 K P, K)
    diff = (w[0::2] - w[1::2]) / (2 * eps)  # (K P, K): row i * P + p
    return np.transpose(diff.reshape(K, P, K), (0, 2, 1))


def assess(observations, law, budget_tokens, *, n_boot: int = 200, seed: int = 0, method: str = "laplace",
           fit_options=None, token_unit: float = 1e6) -> Assessment:
    """Fit `law`, optimise at `budget_tokens`, and the 90% interval of every optimal weight.

    method "laplace" (default): n_boot draws from the fit's Gaussian approximation (module doc);
    "bootstrap": fit's bootstrap with n_boot resamples of the runs (each one a refit, slower)."""
    from mixjax.optimize import check_budgets, optimize

    check_budgets([budget_tokens])
    if method not in ("laplace", "bootstrap"):
        raise MixjaxError(f"uncertainty method must be 'laplace' or 'bootstrap', got {method!r}")
    if n_boot < 10:
        raise MixjaxError(f"n_boot: need at least 10 samples for a 90% interval, got {n_boot}")
    K = len(observations.domains)
    fitted = _fit(observations, law, budget_tokens, fit_options, token_unit,
                  n_boot=n_boot if method == "bootstrap" else 0, seed=seed)
    weights = optimize(fitted, [budget_tokens]).weights[0]
    if method == "bootstrap":
        res = fitted.diagnostics["bootstrap"]["results"][0]
        p05 = np.array([res["weights_p05"][d] for d in fitted.domains])
        p95 = np.array([res["weights_p95"][d] for d in fitted.domains])
        n_ok = int(fitted.diagnostics["bootstrap"]["n_resamples"])
        if n_ok < n_boot // 2:
            p05, p95 = np.zeros(K), np.ones(K)
        return Assessment(fitted, list(fitted.domains), float(budget_tokens), weights, p05, p95, method, n_ok)
    samples = _laplace_weights(fitted, observations, budget_tokens, n_boot, seed)
    ok = np.all(np.isfinite(samples), axis=1)
    if ok.sum() < n_boot // 2:  # the approximation is too wide to say anything
        p05, p95 = np.zeros(K), np.ones(K)
    else:
        p05, p95 = np.percentile(samples[ok], [5, 95], axis=0)
    return Assessment(fitted, list(fitted.domains), float(budget_tokens), weights, p05, p95, method, int(ok.sum()))


def _laplace_weights(fitted, observations, budget_tokens, n_boot, seed) -> np.ndarray:
    """Optimal weights (n_boot, K) for parameters drawn from theta_hat + s^2 F^-1-shaped multivariate
    t with the residual degrees of freedom (the Gaussian approximation with s^2's own uncertainty)."""
    obs = observations.select(fitted.domains)
    K = len(fitted.domains)
    jac = loss_jacobians(fitted, obs.tokens)
    F = _ridge(fisher(jac, obs.observed))
    P = F.shape[-1]
    per = fitted.diagnostics["domains"]
    ss = sum(q["rmse"] ** 2 * q["n_observations"] for q in per.values())
    dof = sum(q["n_observations"] - q["n_free_params"] for q in per.values())
    s2 = ss / max(dof, 1)
    cov = s2 * np.linalg.inv(F)
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    rng = np.random.default_rng(seed)
    raw = raw_params(fitted)
    draws = np.empty((n_boot, K, P))
    for i in range(K):
        vals, vecs = np.linalg.eigh(cov[i])
        root = vecs * np.sqrt(np.maximum(vals, 0.0))
        draws[:, i] = rng.standard_normal((n_boot, P)) @ root.T
    # s^2 comes from only `dof` residuals (K at the smallest start): multivariate t draws, one
    # chi^2 per draw shared by the domains (they share s^2), not Gaussian ones
    t_scale = np.sqrt(max(dof, 1) / rng.chisquare(max(dof, 1), n_boot))
    draws = raw[None] + draws * t_scale[:, None, None]
    return optimal_weights_of(fitted.law, draws, budget_tokens / fitted.token_unit)


def optimal_weights_of(law, raw_BxKxP, budget_units: float) -> np.ndarray:
    """Optimal weights (B, K) at one budget (the law's token unit) for B unconstrained parameter
    sets (B, K, P), in one call of the fit's compiled, vmapped bootstrap solver (NaN where it fails)."""
    import jax
    import jax.numpy as jnp

    from mixjax.fit import compiled_bootstrap_weights

    raw = np.asarray(raw_BxKxP, np.float64)
    n, K = raw.shape[:2]
    B = -(-n // 8) * 8  # pad to a multiple of 8: one compiled solve for similar sizes
    raw = np.concatenate([raw, np.broadcast_to(raw[:1], (B - n,) + raw.shape[1:])])
    with jax.enable_x64(True), np.errstate(over="ignore", invalid="ignore"):
        w = compiled_bootstrap_weights(jnp.asarray(raw), jnp.asarray(1.0), jnp.asarray([float(budget_units)]),
                                       jnp.zeros(K), jnp.ones((1, K)), law=law)
    return np.asarray(w)[:n, 0]


def weight_uncertainty(observations, law, budget_tokens, n_boot: int = 200, seed: int = 0,
                       method: str = "laplace", **kwargs) -> np.ndarray:
    """The 90% interval width (K,) of each optimal weight at `budget_tokens` (see `assess`)."""
    return assess(observations, law, budget_tokens, n_boot=n_boot, seed=seed, method=method, **kwargs).widths


def should_stop(widths, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """True when every weight's 90% interval is narrower than `tolerance`."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating)) \
            or not math.isfinite(tolerance) or tolerance <= 0:
        raise MixjaxError(f"`tolerance`: must be a positive number, got {tolerance!r}")
    w = np.asarray(list(widths.values()) if isinstance(widths, dict) else widths, np.float64)
    return bool(w.size and np.all(np.isfinite(w)) and np.all(w < tolerance))


# -- candidates and the choice --------------------------------------------------------------------

def _round3(x: float) -> int:
    """x rounded to 3 significant figures (an integer number of tokens)."""
    if x <= 0:
        return 0
    digits = 3 - int(math.floor(math.log10(x))) - 1
    return int(round(x, digits))


def _format_tokens(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def run_from_tokens(tokens: dict[str, float]) -> ProposedRun:
    """A run of these per-domain tokens, each rounded to 3 significant figures, named after them
    ("if=1.2M+math=800k+code=1M"): the name is a function of the run, so a resumed sweep finds it."""
    rounded = {d: _round3(float(t)) for d, t in tokens.items()}
    total = sum(rounded.values())
    if total <= 0:
        raise MixjaxError("a candidate run has no tokens")
    name = "+".join(f"{d}={_format_tokens(n)}" for d, n in rounded.items())
    return ProposedRun(name, {d: n / total for d, n in rounded.items()}, int(total))


def run_tokens(run: ProposedRun) -> dict[str, float]:
    return {d: w * run.budget_tokens for d, w in run.weights.items()}


def candidate_runs(observations, domains, budget_tokens, base_fraction: float = 0.25, *, weights=None,
                   law=None, factors=DEFAULT_FACTORS, fit_options=None, n_spread: int | None = None
                   ) -> list[ProposedRun]:
    """li2025's perturbation family around the current estimate of the optimum, mixtures near it,
    and spread-out mixtures.

    The base run has base_fraction x budget tokens split as the estimated optimal weights `weights`
    (a {domain: weight} dict or (K,) array; None: fit `law` (default li2025) to `observations` and
    optimise at the budget, or uniform when there are no observations). Candidates: that base run;
    each domain's tokens x `factors` with the others kept; each domain's weight x 1.5 and / 1.5
    (renormalised) at the base total; the estimated optimum at 0.5x and 2x the base total; and
    `n_spread` (default 4K) Dirichlet(1) mixtures at totals log-uniform in 0.5x-2x the base total
    (`spread_tokens`; they vary every domain at once, which the one-domain perturbations do not), drawn
    from a seed that is a hash of the domains and the observed run names, so the same observations
    give the same candidates. Token counts are rounded to 3 significant figures and the names come
    from them (`run_from_tokens`): stable and unique. Runs already in `observations` (by name) are
    left out."""
    from mixjax.optimize import check_budgets

    domains = list(domains)
    K = len(domains)
    if K < 2:
        raise MixjaxError("adaptive design needs at least 2 domains")
    check_budgets([budget_tokens])
    if not (base_fraction > 0):
        raise MixjaxError(f"`base_fraction`: must be positive, got {base_fraction}")
    w = _current_weights(observations, domains, budget_tokens, weights, law, fit_options)
    total = base_fraction * float(budget_tokens)
    base = {d: total * w[j] for j, d in enumerate(domains)}
    # a domain at weight ~0 would never be perturbed: give it at least 1% of the base total
    floor = 0.01 * total
    base = {d: max(n, floor) for d, n in base.items()}
    tokens_list = [base]
    for d in domains:
        for f in factors:
            tokens_list.append({o: n * f if o == d else n for o, n in base.items()})
    for d in domains:
        for f in NEAR_FACTORS:
            mixed = {o: n * f if o == d else n for o, n in base.items()}
            s = sum(mixed.values())
            tokens_list.append({o: n * sum(base.values()) / s for o, n in mixed.items()})
    for f in SCALE_FACTORS:
        tokens_list.append({o: n * f for o, n in base.items()})
    observed = list(observations.runs) if observations is not None else []
    n_spread = 4 * K if n_spread is None else int(n_spread)
    tokens_list += spread_tokens(domains, total, n_spread, stable_seed("candidates", *domains, *sorted(observed)))
    seen = set(observed)
    out = []
    for tokens in tokens_list:
        run = run_from_tokens(tokens)
        if run.name not in seen:
            seen.add(run.name)
            out.append(run)
    return out


def stable_seed(*parts: str) -> int:
    """A seed that is a function of the strings (sha256; Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "little")


def spread_tokens(domains, total: float, n: int, seed: int) -> list[dict[str, float]]:
    """n runs spread over the mixtures and sizes: Dirichlet(1) mixtures (each weight at least 1%, then
    renormalised, so no domain is left out of a run) at totals log-uniform in SPREAD_TOTALS x `total`."""
    K = len(domains)
    rng = np.random.default_rng(seed)
    mix = np.maximum(rng.dirichlet(np.ones(K), size=n), 0.01)
    mix /= mix.sum(axis=1, keepdims=True)
    lo, hi = SPREAD_TOTALS
    totals = total * np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    return [{d: float(t * m[j]) for j, d in enumerate(domains)} for m, t in zip(mix, totals)]


def _current_weights(observations, domains, budget_tokens, weights, law, fit_options) -> np.ndarray:
    K = len(domains)
    if weights is not None:
        if isinstance(weights, dict):
            missing = [d for d in domains if d not in weights]
            if missing:
                raise MixjaxError(f"weights: no weight for domain {missing[0]!r}")
            weights = [weights[d] for d in domains]
        w = np.asarray(weights, np.float64)
        if w.shape != (K,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise MixjaxError(f"weights: need {K} non-negative weights, got {np.asarray(weights).tolist()}")
        return w / w.sum()
    if observations is None or not len(observations.runs):
        return np.full(K, 1.0 / K)
    from mixjax import laws
    from mixjax.optimize import optimize

    law = law or laws.get("li2025")
    fitted = _fit(observations.select(domains), law, budget_tokens, fit_options, 1e6)
    return optimize(fitted, [budget_tokens]).weights[0]


def initial_runs(domains, budget_tokens, base_fraction: float = 0.25, factors=None, *, law=None,
                 n_runs: int | None = None, pool: int = 32) -> list[ProposedRun]:
    """A small, spread-out start that identifies `law` (default li2025): the uniform base run
    (base_fraction x budget tokens split evenly) and then, greedily, the run farthest from those
    chosen (maximin over the mixture and log2 of the total / 2) out of `pool` fixed spread-out runs
    (`spread_tokens`, seed 0: the design depends only on K, the budget and base_fraction), until there
    are `n_runs` runs (default n_free + 1, 6 for li2025: the fewest the fit's rule allows) and the
    runs pass `check_identifiable`. Why: the fewer runs the start spends, the more the adaptive choice
    decides; mixtures that vary every domain at once spread the runs over the tokens that the law's
    terms depend on (own tokens, the others' total) with fewer runs than one-domain perturbations.
    Named like the candidates (`run_from_tokens`).

    factors: instead, the earlier design: the base run and each domain x each factor, the others
    kept (1 + len(factors) K runs; (0.5, 2) identifies li2025)."""
    from mixjax import laws

    domains = list(domains)
    K = len(domains)
    if K < 2:
        raise MixjaxError("adaptive design needs at least 2 domains")
    total = base_fraction * float(budget_tokens)
    n = total / K
    base = {d: n for d in domains}
    if factors is not None:
        tokens = [base] + [{o: n * f if o == d else n for o in domains} for d in domains for f in factors]
        return [run_from_tokens(t) for t in tokens]
    law = law or laws.get("li2025")
    n_runs = law.n_free(K) + 1 if n_runs is None else int(n_runs)
    runs = [run_from_tokens(base)]
    pool_runs = [run_from_tokens(t) for t in spread_tokens(domains, total, max(pool, n_runs), 0)]

    def features(run):
        w = np.array([run.weights[d] for d in domains])
        return np.append(w, math.log2(run.budget_tokens / total) / 2)

    def problems():
        table = np.array([[run_tokens(r)[d] for d in domains] for r in runs])
        return _design_problems(domains, table, np.ones(table.shape, bool), law)

    chosen = [features(runs[0])]
    left = [r for r in pool_runs if r.name != runs[0].name]
    while left and (len(runs) < n_runs or problems()):
        dist = [min(float(np.linalg.norm(features(r) - c)) for c in chosen) for r in left]
        best = left.pop(int(np.argmax(dist)))
        runs.append(best)
        chosen.append(features(best))
    if problems():
        raise MixjaxError(f"no identifiable start for law {law.name} in {len(pool_runs)} spread-out runs; "
                          "give a larger pool")
    return runs


def identifying_runs(observations, law, budget_tokens, base_fraction: float = 0.25) -> list[ProposedRun]:
    """The runs to add to `observations` so that they identify `law`: greedily, the run of the
    adaptive design's start (`initial_runs`: the uniform base run, then spread-out mixtures; then
    the rest of its pool) that most reduces what the runs lack (distinct own tokens, others'
    totals and settings per domain), until nothing is; ties go to the start's order. [] when
    the runs identify it already."""
    domains = list(observations.domains)
    table = [list(map(float, row)) for row in np.asarray(observations.tokens, np.float64)]
    mask = [list(map(bool, row)) for row in np.asarray(observations.observed)]
    every = [True] * len(domains)
    if not identification_problems(observations, law):
        return []
    start = initial_runs(domains, budget_tokens, base_fraction, law=law)
    pool = start + [run_from_tokens(t) for t in spread_tokens(domains, base_fraction * float(budget_tokens), 32, 0)]
    have = {tuple(np.round(r, 6)) for r in table}
    names, left = set(), []
    for run in pool:
        row = tuple(np.round([run_tokens(run)[d] for d in domains], 6))
        if run.name not in names and row not in have:
            names.add(run.name)
            left.append(run)
    chosen = []
    deficit = _design_deficit(domains, table, mask, law)
    while deficit and left:
        after = [_design_deficit(domains, table + [[run_tokens(r)[d] for d in domains]], mask + [every], law)
                 for r in left]
        best = int(np.argmin(after))
        if after[best] >= deficit:
            break
        run = left.pop(best)
        chosen.append(run)
        table.append([run_tokens(run)[d] for d in domains])
        mask.append(every)
        deficit = after[best]
    if deficit:
        raise MixjaxError(f"no runs of the adaptive design's start identify law {law.name} with these runs")
    return chosen


def _check_candidates(candidates, domains) -> None:
    if not candidates:
        raise MixjaxError("no candidate runs to choose from")
    want = set(domains)
    for run in candidates:
        have = set(run.weights)
        if have != want:
            missing = sorted(want - have)
            extra = sorted(have - want)
            what = (f"lacks the observed domain(s) {', '.join(missing)}" if missing
                    else f"has domain(s) {', '.join(extra)} that the observations do not")
            raise MixjaxError(f"candidate run {run.name!r} {what}; candidates must cover exactly the "
                              f"observations' domains {list(domains)}")


def candidate_gains(fitted, observations, candidates) -> np.ndarray:
    """Each candidate's D-optimal gain (log det increase of the Fisher information) on the runs so far."""
    F, rows = _fisher_and_rows(fitted, observations, candidates)
    return np.array([log_det_gain(F, rows[c]) for c in range(len(candidates))])


def _fisher_and_rows(fitted, observations, candidates):
    """The Fisher information (K, P, P) of the observed runs, and each candidate's Jacobian rows (C, K, P)."""
    obs = observations.select(fitted.domains)
    F = fisher(loss_jacobians(fitted, obs.tokens), obs.observed)
    tokens = np.array([[run_tokens(c)[d] for d in fitted.domains] for c in candidates])
    return F, loss_jacobians(fitted, tokens)


def candidate_weight_gains(fitted, observations, candidates, budget_tokens, eps: float = WEIGHT_EPS) -> np.ndarray:
    """Each candidate's reduction of `weight_variance` (the delta-method variance of the optimal
    weights at `budget_tokens`, in units of s^2) on the runs so far."""
    F, rows = _fisher_and_rows(fitted, observations, candidates)
    return weight_variance_reduction(F, weight_jacobian(fitted, budget_tokens, eps), rows)


def propose_next(observations, law, budget_tokens, candidates, n: int = 1, *, fitted=None, fit_options=None,
                 token_unit: float = 1e6, criterion: str = "weights", eps: float = WEIGHT_EPS) -> list[ProposedRun]:
    """The `n` candidates that most shrink the uncertainty of the fit, greedily (each pick is added
    to the Fisher information before the next). criterion "weights" (default): the largest reduction
    of the delta-method variance of the optimal weights at `budget_tokens` (`weight_variance_reduction`
    with G = `weight_jacobian`; falls back to D-optimal for a pick where G is not finite or no
    candidate lowers it, e.g. an optimum whose weights do not move); "d-optimal": the largest increase
    of log det of the Fisher information of the law's parameters. Candidates named like an observed
    run are skipped. `fitted`: a fit of `law` to `observations` to reuse."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise MixjaxError(f"`runs`: must be a whole number >= 1, got {n!r}")
    if criterion not in CRITERIA:
        raise MixjaxError(f"design criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    domains = list(observations.domains)
    _check_candidates(candidates, domains)
    if fitted is None:
        fitted = _fit(observations, law, budget_tokens, fit_options, token_unit)
    observed_runs = set(observations.runs)
    pool = [c for c in candidates if c.name not in observed_runs]
    names = [c.name for c in pool]
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise MixjaxError(f"candidate run name {dup!r} appears twice")
    if not pool:
        return []
    F, rows = _fisher_and_rows(fitted, observations, pool)
    G = weight_jacobian(fitted, budget_tokens, eps) if criterion == "weights" else None
    if G is not None and not np.all(np.isfinite(G)):
        G = None
    chosen = []
    for _ in range(min(n, len(pool))):
        gains = None
        if G is not None:
            gains = weight_variance_reduction(F, G, rows)
            gains = np.where(np.isfinite(gains), gains, -np.inf)
            gains[chosen] = -np.inf
            if not np.max(gains) > 0:
                gains = None
        if gains is None:
            gains = np.array([log_det_gain(F, rows[c]) for c in range(len(pool))])
            gains[chosen] = -np.inf
        best = int(np.argmax(gains))
        chosen.append(best)
        F = F + np.einsum("kp,kq->kpq", rows[best], rows[best])
    return [pool[c] for c in chosen]
