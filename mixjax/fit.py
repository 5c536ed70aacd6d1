"""Fit a mixing law to observed runs: optimistix least squares, many starts under vmap, best kept.

Every run's loss on every domain is a data point for that domain's law (not only the runs that
perturbed the domain). The laws are separable by target domain, so each domain is its own small
least-squares problem; all (resample, domain, start) problems run at once as one vmapped
Levenberg-Marquardt solve, and the best start is kept per domain. The fit runs in float64 inside
`jax.enable_x64` (the global flag is untouched), in the law's unconstrained space (log / logit),
with token counts divided by an internal scale (median run size per domain) so that the
parameters are O(1); the result is converted to the requested `token_unit`.

Optional Huber loss: residual r becomes sign(r) sqrt(2 huber_delta(r)), whose square is twice
the Huber loss, so a least-squares solver minimises the Huber objective.

Diagnostics: RMSE and R^2 per domain, leave-one-run-out prediction error, observations vs free
parameters with an under-determination flag, bootstrap intervals (resampling runs) of the
optimal weights at the budgets asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.laws import FittedLaw, Law
from mixjax.observations import Observations
from mixjax.optimize import QuickCompiled


def default_solver():
    """Levenberg-Marquardt with tolerances suited to float64 fits of O(1) losses."""
    import optimistix as optx

    return optx.LevenbergMarquardt(rtol=1e-8, atol=1e-10)


@dataclass(frozen=True)
class FitOptions:
    """How to fit: starts, robust loss, solver, and how much diagnosis to run."""

    n_starts: int = 32  # random starts per domain for the main fit
    resample_starts: int = 8  # starts per domain for refits (LOO, bootstrap): best fit + random
    huber_delta: float | None = None
    max_steps: int = 100  # the batch runs in lockstep: starts drifting in flat valleys cost time
    seed: int = 0
    solver: object = field(default_factory=default_solver)
    n_bootstrap: int = 20  # resamples of the runs for intervals of the optimal weights
    leave_one_out: bool = True
    max_loo_runs: int = 200  # above this many runs, skip leave-one-out
    # XLA backend level 0: ~2x quicker compiles, ~2x slower solves. The CLI (one fit per
    # process) turns it on; library users fitting many tables keep the optimised code.
    fast_compile: bool = False


def huberize(r, delta: float):
    """Residual whose square is 2 x Huber(r; delta): r inside [-delta, delta], sqrt-linear outside."""
    import jax.numpy as jnp

    a = jnp.abs(r)
    outer = jnp.sign(r) * jnp.sqrt(jnp.maximum(2 * delta * a - delta**2, delta**2))
    return jnp.where(a <= delta, r, outer)


def domain_params_from_raw(law: Law, raw_KxP):
    """Named parameters (fields with a leading domain axis) from raw vectors, one per domain."""
    import jax
    import jax.numpy as jnp

    K = raw_KxP.shape[0]
    return jax.vmap(lambda raw, i: law.unpack(raw, K, i))(raw_KxP, jnp.arange(K))


def fit_batch(
    law, solver, raw0_BxKxSxP, tokens_RxK, losses_RxK, weights_BxRxK, huber_delta, max_steps
):
    """Solve every (resample b, domain i, start s) least-squares problem at once.

    weights_BxRxK weighs each (run, domain) residual (0 = missing or left out; bootstrap counts).
    Returns the solutions (B, K, S, P) and their objectives 0.5 sum(weighted residual^2) (B, K, S).
    """
    import jax
    import jax.numpy as jnp
    import optimistix as optx

    K = tokens_RxK.shape[1]

    def residuals_for(i, losses_R, weights_R):
        def residuals(raw, _):
            p = law.unpack(raw, K, i)
            predicted_R = jax.vmap(lambda t: law.domain_loss(p, t, i))(tokens_RxK)
            r = predicted_R - losses_R
            if huber_delta is not None:
                r = huberize(r, huber_delta)
            return jnp.sqrt(weights_R) * r

        return residuals

    def solve_one(raw0, losses_R, weights_R, i):
        residuals = residuals_for(i, losses_R, weights_R)
        sol = optx.least_squares(residuals, solver, raw0, max_steps=max_steps, throw=False)
        objective = 0.5 * jnp.sum(residuals(sol.value, None) ** 2)
        return sol.value, jnp.where(jnp.isfinite(objective), objective, jnp.inf)

    over_starts = jax.vmap(solve_one, in_axes=(0, None, None, None))
    over_domains = jax.vmap(over_starts, in_axes=(0, 1, 1, 0))
    over_resamples = jax.vmap(over_domains, in_axes=(0, None, 0, None))
    return over_resamples(raw0_BxKxSxP, losses_RxK, weights_BxRxK, jnp.arange(K))


def random_starts(law, key, n_starts, tokens_RxK, losses_RxK, weights_BxRxK):
    """Random data-driven starts (B, K, S, P) from the law's `random_raw`."""
    import jax
    import jax.numpy as jnp

    B, K = weights_BxRxK.shape[0], tokens_RxK.shape[1]
    keys = jax.random.split(key, (B, K, n_starts))

    def one(k, losses_R, weights_R, i):
        return law.random_raw(k, tokens_RxK, losses_R, weights_R, i)

    over_starts = jax.vmap(one, in_axes=(0, None, None, None))
    over_domains = jax.vmap(over_starts, in_axes=(0, 1, 1, 0))
    over_resamples = jax.vmap(over_domains, in_axes=(0, None, 0, None))
    return over_resamples(keys, losses_RxK, weights_BxRxK, jnp.arange(K))


def best_of_starts(raw_BxKxSxP, objective_BxKxS):
    """The best start per (resample, domain): raw (B, K, P) and objective (B, K)."""
    import jax.numpy as jnp

    best = jnp.argmin(objective_BxKxS, axis=-1)
    raw = jnp.take_along_axis(raw_BxKxSxP, best[..., None, None], axis=2)[:, :, 0]
    return raw, jnp.min(objective_BxKxS, axis=-1)


def _fit_from_starts(
    key, warm_BxKxP, tokens, losses, weights, *, law, solver, n_random, huber_delta, max_steps
):
    """A warm start plus `n_random` random starts per problem, one batched solve, best kept."""
    import jax.numpy as jnp

    raw0 = random_starts(law, key, n_random, tokens, losses, weights)
    raw0 = jnp.concatenate([warm_BxKxP[:, :, None, :], raw0], axis=2)
    raw, objective = fit_batch(law, solver, raw0, tokens, losses, weights, huber_delta, max_steps)
    return best_of_starts(raw, objective)


def _first_starts(key, tokens, losses, weights, *, law):
    return random_starts(law, key, 1, tokens, losses, weights)[:, :, 0]


def _bootstrap_weights_kw(raw_BxKxP, rescale_factor, budgets_N, lower_K, upper_NxK, *, law):
    return _bootstrap_weights(law, raw_BxKxP, rescale_factor, budgets_N, lower_K, upper_NxK)


_compiled_fit = QuickCompiled(
    _fit_from_starts, ("law", "solver", "n_random", "huber_delta", "max_steps")
)
_compiled_first_starts = QuickCompiled(_first_starts, ("law",))
# the optimal weights of many parameter draws in one compiled call (the bootstrap's; mixjax.methods.adaptive_design's)
compiled_bootstrap_weights = QuickCompiled(_bootstrap_weights_kw, ("law",))


def check_enough_runs(law: Law, obs: Observations) -> None:
    """One-line error when some domain has fewer measured losses than the law's free parameters."""
    n_free = law.n_free(len(obs.domains))
    counts = obs.observed.sum(axis=0)
    for d, n in zip(obs.domains, counts):
        if n < n_free:
            raise MixjaxError(
                f"law {law.name} has {n_free} free parameters per domain but only {n} run(s) "
                f"measure the loss of {d!r}: add at least {n_free - n} more run(s) "
                f"({n_free + 1 - n} to also estimate the fit's error)"
            )


def token_scale(tokens_RxK: np.ndarray) -> float:
    """Internal token unit: the median run size per domain, so fitted parameters are O(1)."""
    totals = tokens_RxK.sum(axis=1)
    return float(np.median(totals) / tokens_RxK.shape[1])


def bind_fixed(law: Law, domains: list[str], fixed: dict | None, scale: float) -> Law:
    """The law the fit moves: `law` itself, or, for a law with fields it does not fit, the law
    bound to their values (in `domains` order; token counts in the fit's internal unit `scale`)."""
    if law.bind is None:
        if fixed:
            raise MixjaxError(f"`fixed`: law {law.name} fits all its fields; it takes no {', '.join(fixed)}")
        return law
    values = {}
    for name, value in (fixed or {}).items():
        if value is None:
            continue
        if not isinstance(value, dict) and np.ndim(value) == 0:
            value = float(value)
        if isinstance(value, dict):
            missing = [d for d in domains if d not in value]
            if missing:
                raise MixjaxError(f"`fixed`: {name} has no value for domain(s) {', '.join(missing)}")
            value = [value[d] for d in domains]
        array = np.broadcast_to(np.asarray(value, np.float64), (len(domains),))
        if not np.all(np.isfinite(array)) or np.any(array <= 0):
            raise MixjaxError(f"`fixed`: {name} must be positive numbers, got {array.tolist()}")
        values[name] = array
    return law.bind(values, scale)


def _checked_inputs(law: Law, obs: Observations, token_unit: float, options: FitOptions, budgets) -> np.ndarray:
    """One-line errors for a bad token unit, Huber delta, budget or too few runs; the budgets."""
    if not np.isfinite(token_unit) or token_unit <= 0:
        raise MixjaxError(f"`token_unit`: must be a positive number, got {token_unit:g}")
    if options.huber_delta is not None and not (options.huber_delta > 0):
        raise MixjaxError(f"`huber_delta`: delta must be a positive number, got {options.huber_delta:g}")
    budgets_B = np.asarray(budgets, dtype=np.float64).reshape(-1)
    if budgets_B.size:
        from mixjax.optimize import check_budgets

        check_budgets(budgets_B)
    check_enough_runs(law, obs)
    return budgets_B


def _padded_table(obs: Observations, scale: float):
    """(tokens / scale, losses, observed weights), runs padded to a multiple of 16 with zero-weight
    rows, so tables of similar size share one compiled solve."""
    K, R = len(obs.domains), len(obs.runs)
    pad_rows = -(-R // 16) * 16 - R
    tokens = np.vstack([obs.tokens, np.repeat(obs.tokens[:1], pad_rows, axis=0)]) / scale
    losses = np.vstack([np.where(obs.observed, obs.losses, 0.0), np.zeros((pad_rows, K))])
    observed = np.vstack([obs.observed.astype(np.float64), np.zeros((pad_rows, K))])
    return tokens, losses, observed


def _padded_resamples(resample_weights, pad_rows: int, observed_RxK: np.ndarray):
    """(resample weights padded to the table's rows and to a multiple of 8 resamples, B); B = 1
    and None without resamples."""
    if resample_weights is None:
        return None, 1
    n_resamples = resample_weights.shape[0]
    B = -(-n_resamples // 8) * 8
    R_pad, K = observed_RxK.shape
    return np.concatenate([np.pad(resample_weights, ((0, 0), (0, pad_rows), (0, 0))),
                           np.broadcast_to(observed_RxK, (B - n_resamples, R_pad, K))]), B


def fit(
    law: Law,
    obs: Observations,
    *,
    token_unit: float = 1e6,
    budgets=(),
    options: FitOptions | None = None,
    fixed: dict | None = None,
    available=None,
    max_epochs: float | None = None,
) -> FittedLaw:
    """Fit `law` to `obs` and diagnose the fit; `budgets` (tokens) get bootstrap weight intervals
    (within the data cap available_i x max_epochs when `available` gives each domain's tokens).
    `fixed`: values of the law's fields the fit does not move (li2025-repeat: "unique", each
    domain's training tokens, and optionally "R_star"), each {domain: value} or one number."""
    import jax
    import jax.numpy as jnp

    options = options or FitOptions()
    registry_law = law
    scale = token_scale(obs.tokens)
    law = bind_fixed(law, obs.domains, fixed, scale)
    budgets_B = _checked_inputs(law, obs, token_unit, options, budgets)
    K, R = len(obs.domains), len(obs.runs)
    tokens_np, losses_np, observed_RxK = _padded_table(obs, scale)
    R_pad = tokens_np.shape[0]
    pad_rows = R_pad - R

    with jax.enable_x64(True):
        tokens = jnp.asarray(tokens_np)
        losses = jnp.asarray(losses_np)
        keys = jax.random.split(jax.random.PRNGKey(options.seed), 4)
        key_first, key_main, key_resample, key_boot = keys
        resample_weights, loo_runs, n_boot = _resample_weights(obs, options, key_boot)
        resample_weights, B = _padded_resamples(resample_weights, pad_rows, observed_RxK)
        # One compiled solve serves both passes (same shapes): pass 1 fits the full data from
        # B x S random starts, pass 2 refits every resample from the pass-1 optimum + random starts.
        full_weights = jnp.broadcast_to(jnp.asarray(observed_RxK), (B, R_pad, K))
        n_random = max(options.n_starts // B, options.resample_starts) - 1
        warm = _compiled_first_starts(key_first, tokens, losses, full_weights, law=law)
        static = dict(
            law=law, solver=options.solver, n_random=n_random,
            huber_delta=options.huber_delta, max_steps=options.max_steps,
            fast_compile=options.fast_compile,
        )
        raw_BxKxP, objective_BxK = _compiled_fit(key_main, warm, tokens, losses, full_weights, **static)
        best = np.argmin(np.asarray(objective_BxK), axis=0)
        raw_KxP = raw_BxKxP[best, np.arange(K)]
        objective_K = np.asarray(objective_BxK)[best, np.arange(K)]
        params_internal, predicted_RxK = _compiled_params_and_predictions(raw_KxP, tokens, law=law)
        predicted_RxK = np.asarray(predicted_RxK)[:R]

        refit = None
        if resample_weights is not None:
            warm = jnp.broadcast_to(raw_KxP, (B,) + raw_KxP.shape)
            refit, _ = _compiled_fit(
                key_resample, warm, tokens, losses, jnp.asarray(resample_weights), **static
            )
        diagnostics = _fit_quality(law, obs, predicted_RxK, objective_K)
        diagnostics["fit"] = {
            "solver": type(options.solver).__name__,
            "starts_per_domain": B * (n_random + 1),
            "huber_delta": options.huber_delta,
            "internal_token_scale": scale,
        }
        if refit is not None and loo_runs:
            loo_raw = refit[: len(loo_runs)]
            diagnostics["leave_one_out"] = _loo_report(law, obs, tokens, loo_raw, loo_runs)
        params = law.rescale(jax.tree.map(np.asarray, params_internal), scale / token_unit)
        params = law.params_type(*(np.asarray(x, dtype=np.float64) for x in params))
        fitted = FittedLaw(registry_law, list(obs.domains), float(token_unit), params, diagnostics)
        if refit is not None and n_boot and budgets_B.size:
            boot_raw = refit[len(loo_runs) : len(loo_runs) + n_boot]
            diagnostics["bootstrap"] = _bootstrap_report(
                law, fitted, boot_raw, budgets_B, scale / token_unit, available, max_epochs
            )
        elif budgets_B.size:
            diagnostics["bootstrap"] = {"n_resamples": 0, "note": "bootstrap disabled"}
    return fitted


def _params_and_predictions(raw_KxP, tokens_RxK, *, law):
    """Named parameters from raw vectors, and the law's losses (R, K) at every run."""
    import jax

    from mixjax.laws import predict

    params = domain_params_from_raw(law, raw_KxP)
    return params, jax.vmap(lambda t: predict(law, params, t))(tokens_RxK)


def _held_out_predictions(raw_RxKxP, tokens_RxK, *, law):
    """Run r's losses predicted by the fit that left run r out: (R, K)."""
    import jax

    return jax.vmap(lambda raw, t: _params_and_predictions(raw, t[None], law=law)[1][0])(
        raw_RxKxP, tokens_RxK
    )


_compiled_params_and_predictions = QuickCompiled(_params_and_predictions, ("law",))
_compiled_held_out = QuickCompiled(_held_out_predictions, ("law",))


def _resample_weights(obs: Observations, options: FitOptions, key):
    """Residual weights for leave-one-out (one row per run) and bootstrap refits, stacked."""
    import jax

    R = len(obs.runs)
    observed = obs.observed.astype(np.float64)
    rows, loo_runs = [], []
    if options.leave_one_out and R <= options.max_loo_runs:
        for r in range(R):
            w = observed.copy()
            w[r] = 0.0
            rows.append(w)
            loo_runs.append(r)
    n_boot = max(int(options.n_bootstrap), 0)
    if n_boot:
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        for _ in range(n_boot):
            counts = np.bincount(rng.integers(0, R, R), minlength=R).astype(np.float64)
            rows.append(observed * counts[:, None])
    if not rows:
        return None, [], 0
    return np.stack(rows), loo_runs, n_boot


def _fit_quality(law: Law, obs: Observations, predicted_RxK, objective_K) -> dict:
    """RMSE, R^2, observations vs free parameters and the under-determination flag, per domain."""
    n_free = law.n_free(len(obs.domains))
    per_domain, messages = {}, []
    for j, d in enumerate(obs.domains):
        mask = obs.observed[:, j]
        y, yhat = obs.losses[mask, j], predicted_RxK[mask, j]
        ss_res = float(np.sum((y - yhat) ** 2))
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        n_obs = int(mask.sum())
        under = n_obs <= n_free
        if under:
            messages.append(
                f"{d}: {n_obs} observations for {n_free} free parameters - the fit passes through "
                f"the points and its error cannot be estimated; add at least {n_free + 1 - n_obs} run(s)"
            )
        per_domain[d] = {
            "n_observations": n_obs,
            "n_free_params": n_free,
            "residual_dof": n_obs - n_free,
            "under_determined": under,
            "rmse": float(np.sqrt(ss_res / n_obs)),
            "r2": float(1 - ss_res / ss_tot) if ss_tot > 0 else None,
            "objective": float(objective_K[j]),
        }
    all_res = (obs.losses - predicted_RxK)[obs.observed]
    run_tokens = obs.tokens.sum(axis=1)
    return {
        "n_runs": len(obs.runs),
        # the runs' sizes: how far a budget lies past them (`optimize` prints the ratio)
        "run_tokens": {"min": float(run_tokens.min()), "max": float(run_tokens.max())},
        "n_observations": int(obs.observed.sum()),
        "n_free_params": n_free * len(obs.domains),
        "under_determined": bool(messages),
        "message": "; ".join(messages)
        if messages
        else f"every domain has more observations than its {n_free} free parameters",
        "rmse": float(np.sqrt(np.mean(all_res**2))),
        "objective": float(np.sum(objective_K)),
        "domains": per_domain,
    }


def _loo_report(law, obs, tokens, raw_RxKxP, loo_runs) -> dict:
    """Prediction error on each run from the fit without it (per domain RMSE and max)."""
    held_out_RxK = np.asarray(
        _compiled_held_out(raw_RxKxP, tokens[np.asarray(loo_runs)], law=law)
    )
    errors = held_out_RxK - obs.losses[loo_runs]
    report = {}
    for j, d in enumerate(obs.domains):
        e = errors[:, j][obs.observed[loo_runs, j]]
        e = e[np.isfinite(e)]
        report[d] = {
            "rmse": float(np.sqrt(np.mean(e**2))) if e.size else None,
            "max_abs": float(np.max(np.abs(e))) if e.size else None,
        }
    return {"n_runs": len(loo_runs), "domains": report}


def _bootstrap_weights(law, raw_BxKxP, rescale_factor, budgets_N, lower_K, upper_NxK):
    """Optimal weights (B, N, K) at every budget for every resampled fit."""
    import jax

    def weights_for(raw_KxP):
        params = law.rescale(domain_params_from_raw(law, raw_KxP), rescale_factor)
        from mixjax.optimize import solve_weights_many

        return solve_weights_many(law, params, budgets_N, lower_K, upper_NxK)[0]

    return jax.vmap(weights_for)(raw_BxKxP)


def _bootstrap_report(law, fitted: FittedLaw, raw_BxKxP, budgets_B, rescale_factor, available=None,
                      max_epochs=None) -> dict:
    """5/50/95th percentiles of the optimal weights over refits on resampled runs."""
    import jax.numpy as jnp

    from mixjax.optimize import weight_bounds

    lower_K, upper_BxK = weight_bounds(fitted.domains, budgets_B, available=available, max_epochs=max_epochs)
    weights_BxNxK = np.asarray(
        compiled_bootstrap_weights(
            raw_BxKxP,
            jnp.asarray(rescale_factor),
            jnp.asarray(budgets_B / fitted.token_unit),
            jnp.asarray(lower_K),
            jnp.asarray(upper_BxK),
            law=law,
        )
    )
    ok = np.all(np.isfinite(weights_BxNxK), axis=(1, 2))
    weights_BxNxK = weights_BxNxK[ok]
    results = []
    for n, budget in enumerate(budgets_B):
        q = np.percentile(weights_BxNxK[:, n], [5, 50, 95], axis=0)
        results.append(
            {
                "budget": int(budget) if float(budget).is_integer() else float(budget),
                "weights_p05": dict(zip(fitted.domains, q[0].tolist())),
                "weights_median": dict(zip(fitted.domains, q[1].tolist())),
                "weights_p95": dict(zip(fitted.domains, q[2].tolist())),
            }
        )
    return {"n_resamples": int(ok.sum()), "results": results}
