"""Weights on the simplex that minimise a law's total predicted loss at a budget.

    minimise_w  sum_i L_i(w * N)   s.t.  sum_i w_i = 1,  lower_i <= w_i <= upper_i

`upper` folds in the cap from the data that exists: n_i <= available_i * max_epochs, i.e.
w_i <= available_i * max_epochs / N. For the LMO laws (loglinear, linear) the law sees the
proportions w only, so this is exactly the LMO objective sum_i L_i(p).

Solver: spectral projected gradient (Barzilai-Borwein step, Armijo backtracking) with the exact
Euclidean projection onto the box-constrained simplex, so iterates are always feasible and an
optimum on a face (w_i = 0 or a bound) is reached exactly; nothing is clipped after a step.
Everything is a pure JAX function: many budgets (or many laws) at once under `jax.vmap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from mixjax.errors import MixjaxError

# The one default of `--max-epochs` (train, sweep, mix, optimize, fit): the most passes over a domain's
# training tokens. It is the limit the trainer's sampler has always enforced, so the optimiser never
# recommends weights `train` would refuse; at 10 passes a repeated token still carries most of a new
# one's value (Muennighoff et al., 2023: repeated data decays with R* ~ 15 passes; up to ~4 it is
# almost as good as new: give --max-epochs 4 to stay where the law's fresh-token assumption holds).
DEFAULT_MAX_EPOCHS = 10.0
# How far past its runs' size a law's weights were seen to hold: target budget / the largest run the
# law was fitted on; `optimize` and `mix` warn beyond it. Measured (results/README.md, "Beyond the
# runs"): at 2.4x and 12x (experiments/extrapolation.py, skewed, 3 seeds) the weights came within
# 0.01-0.02 nats of the grid's smoothed optimum, where natural proportions are 0.31 behind, but the
# law's predicted totals missed by 0.13 and 0.47 nats; in the repeated setting (a domain seen up to
# 15 times) 0.025 from it at 2.4x but 0.055 at 12x, further than stratified's 0.033; at 5-11x
# (budget_sweep) and 16-36x (aioli_long) the optimum ended 0.017 and 0.022 nats behind stratified.
VALIDATED_EXTRAPOLATION_RATIO = 10.0
# The data cap leaves this many tokens unused, so that the trainer's sampler (which may round a
# domain's share up by one token) accepts a run at weights held at the cap.
CAP_MARGIN_TOKENS = 2.0


def project_box_simplex(v_K, lower_K, upper_K, bisection_steps: int = 64):
    """Euclidean projection of v onto {w : lower <= w <= upper, sum w = 1}.

    The projection is clip(v - tau, lower, upper) for the tau where the sum is 1; the sum is
    monotone in tau, so tau is found by bisection and then made exact on the final active set.
    Needs sum(lower) <= 1 <= sum(upper). With lower = 0, upper = 1 it equals
    `optax.projections.projection_simplex`.
    """
    import jax
    import jax.numpy as jnp

    def total(tau):
        return jnp.sum(jnp.clip(v_K - tau, lower_K, upper_K))

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = total(mid) > 1
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jnp.min(v_K - upper_K) - 1.0, jnp.max(v_K - lower_K) + 1.0
    lo, hi = jax.lax.fori_loop(0, bisection_steps, halve, (lo, hi))
    tau = 0.5 * (lo + hi)
    free = (v_K - tau > lower_K) & (v_K - tau < upper_K)
    fixed_sum = jnp.sum(jnp.where(free, 0.0, jnp.clip(v_K - tau, lower_K, upper_K)))
    n_free = jnp.sum(free)
    exact_tau = (jnp.sum(jnp.where(free, v_K, 0.0)) - (1 - fixed_sum)) / jnp.maximum(n_free, 1)
    tau = jnp.where(n_free > 0, exact_tau, tau)
    return jnp.clip(v_K - tau, lower_K, upper_K)


def total_loss(law, params, weights_K, budget):
    """sum_i L_i(weights * budget); budget in the law's token unit."""
    import jax.numpy as jnp

    from mixjax.laws import predict

    return jnp.sum(predict(law, params, weights_K * budget))


def solve_weights(law, params, budget, lower_K, upper_K, max_iters: int = 500, tol: float = 1e-10):
    """Optimal weights at one budget (token unit of the law): (weights_K, losses_K, converged).

    Pure and vmappable over params, budget and bounds. Converged means the projected-gradient
    step max|P(w - g) - w| fell below `tol`, or 5 steps in a row gave no measurable decrease
    (an optimum at the kink of the transfer cap, or a flat one).
    """
    import jax
    import jax.numpy as jnp

    from mixjax.laws import predict

    K = lower_K.shape[0]
    objective = lambda w: total_loss(law, params, w, budget)  # noqa: E731
    value_and_grad = jax.value_and_grad(objective)
    project = lambda v: project_box_simplex(v, lower_K, upper_K)  # noqa: E731
    stationarity = lambda w, g: jnp.max(jnp.abs(project(w - g) - w))  # noqa: E731

    w0 = project(jnp.full((K,), 1.0 / K, lower_K.dtype))
    f0, g0 = value_and_grad(w0)
    step0 = 1.0 / jnp.maximum(jnp.max(jnp.abs(g0)), 1e-12)

    def keep_going(state):
        _, _, _, _, it, gap, stalls = state
        return (it < max_iters) & (gap > tol) & (stalls < 5)

    def iterate(state):
        w, f, g, step, it, _, stalls = state
        d = project(w - step * g) - w
        slope = jnp.dot(g, d)

        def too_high(ls):
            t, f_t = ls
            return (f_t > f + 1e-4 * t * slope) & (t > 1e-14)

        def shrink(ls):
            t, _ = ls
            return t / 2, objective(w + (t / 2) * d)

        t, _ = jax.lax.while_loop(too_high, shrink, (jnp.ones_like(f), objective(w + d)))
        w_new = w + t * d
        f_new, g_new = value_and_grad(w_new)
        s, y = w_new - w, g_new - g
        sy = jnp.dot(s, y)
        bb = jnp.where(sy > 0, jnp.dot(s, s) / jnp.where(sy > 0, sy, 1.0), step * 10)
        # no measurable decrease: an optimum at a kink (the transfer cap) or a flat optimum
        stalled = (f - f_new) <= 1e-15 * jnp.abs(f)
        stalls = jnp.where(stalled, stalls + 1, 0)
        gap = stationarity(w_new, g_new)
        return (w_new, f_new, g_new, jnp.clip(bb, 1e-12, 1e12), it + 1, gap, stalls)

    init = (w0, f0, g0, step0, 0, stationarity(w0, g0), 0)
    w, _, g, _, _, gap, stalls = jax.lax.while_loop(keep_going, iterate, init)
    return w, predict(law, params, w * budget), (gap <= tol) | (stalls >= 5)


def solve_weights_many(law, params, budgets_B, lower_K, upper_BxK, max_iters=500, tol=1e-10):
    """`solve_weights` at many budgets at once (vmap): weights (B, K), losses (B, K), converged (B,)."""
    import jax

    solve = lambda N, up: solve_weights(law, params, N, lower_K, up, max_iters, tol)  # noqa: E731
    return jax.vmap(solve)(budgets_B, upper_BxK)


class QuickCompiled:
    """`jax.jit` with static arguments, compiled at XLA backend optimisation level 0.

    The fits and solves here are small and latency-bound: level 0 compiles ~4x faster (seconds
    off every `mixjax fit`) for a negligible cost at run time. `fast_compile=False` (here or per
    call) compiles at the default level; jit caches the executables per static values and argument
    shapes/dtypes (x64 or not is part of the dtypes).
    """

    def __init__(self, fn, static_argnames: tuple[str, ...], fast_compile: bool = True):
        self.fn, self.static_argnames, self.fast_compile = fn, static_argnames, fast_compile
        self.jitted: dict[bool, object] = {}  # made on first use: importing this module stays jax-free

    def __call__(self, *args, fast_compile: bool | None = None, **static):
        import jax

        fast = self.fast_compile if fast_compile is None else fast_compile
        if fast not in self.jitted:
            options = {"xla_backend_optimization_level": 0} if fast else None
            self.jitted[fast] = jax.jit(self.fn, static_argnames=self.static_argnames, compiler_options=options)
        return self.jitted[fast](*args, **static)


def _solve_many_kw(params, budgets_B, lower_K, upper_BxK, *, law, max_iters, tol):
    return solve_weights_many(law, params, budgets_B, lower_K, upper_BxK, max_iters, tol)


_solve_many_compiled = QuickCompiled(_solve_many_kw, ("law", "max_iters", "tol"))


@dataclass
class WeightsResult:
    """Optimal weights at each budget, with the law's predicted per-domain losses there; with the
    data (`available` tokens per domain, `max_epochs`), each domain's passes at the budget, where the
    data cap binds and the optimum without it (`unconstrained`); `run_tokens` (smallest, largest)
    are the sizes of the runs the law was fitted on, when its file records them."""

    law: str
    domains: list[str]
    budgets: np.ndarray  # (B,) tokens
    weights: np.ndarray  # (B, K)
    predicted_loss: np.ndarray  # (B, K)
    converged: np.ndarray  # (B,)
    available: dict[str, float] | None = None
    max_epochs: float | None = None
    unconstrained: np.ndarray | None = None  # (B, K): the optimum without the data cap
    run_tokens: tuple[float, float] | None = None

    def passes(self) -> np.ndarray:
        """(B, K) passes over each domain's training tokens at each budget (nan: count unknown)."""
        avail = np.array([float((self.available or {}).get(d, np.nan)) for d in self.domains])
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.weights * self.budgets[:, None] / avail[None, :]

    def cap_binds(self, b: int) -> list[str]:
        """The domains whose data cap (available x max_epochs) holds the weight at budget b."""
        if not self.available:
            return []
        tokens = self.weights[b] * self.budgets[b]
        return [d for j, d in enumerate(self.domains) if d in self.available
                and tokens[j] >= cap_tokens(self.available[d], self.max_epochs) * (1 - 1e-7)]

    def extrapolation_ratio(self, b: int) -> float | None:
        """Budget b / the largest run the law was fitted on (None: sizes not recorded)."""
        return None if self.run_tokens is None else float(self.budgets[b] / self.run_tokens[1])

    def to_json(self) -> dict:
        results = []
        for b, budget in enumerate(self.budgets):
            entry = {
                "budget": _number(budget),
                "weights": {d: float(self.weights[b, j]) for j, d in enumerate(self.domains)},
                "predicted_loss": {d: float(self.predicted_loss[b, j]) for j, d in enumerate(self.domains)},
                "predicted_total_loss": float(np.sum(self.predicted_loss[b])),
                "tokens": {d: float(self.weights[b, j] * budget) for j, d in enumerate(self.domains)},
                "converged": bool(self.converged[b]),
            }
            entry.update(self._data_record(b))
            if self.run_tokens is not None:
                entry["extrapolation_ratio"] = self.extrapolation_ratio(b)
            results.append(entry)
        out = {"law": self.law, "domains": list(self.domains), "results": results}
        if self.available:
            out["data"] = {"train_tokens": {d: _number(n) for d, n in self.available.items()},
                           "max_epochs": self.max_epochs}
        if self.run_tokens is not None:
            out["fit_runs"] = {"min_tokens": _number(self.run_tokens[0]), "max_tokens": _number(self.run_tokens[1])}
        return out

    def _data_record(self, b: int) -> dict:
        if not self.available:
            return {}
        passes = self.passes()[b]
        return {"passes": {d: float(passes[j]) for j, d in enumerate(self.domains) if np.isfinite(passes[j])},
                "cap_binds": self.cap_binds(b),
                "unconstrained_weights": {d: float(self.unconstrained[b, j]) for j, d in enumerate(self.domains)}}


def cap_tokens(available: float, max_epochs: float) -> float:
    """The most tokens of a domain a weights file may ask for: available x max_epochs, less the margin."""
    return max(float(available) * float(max_epochs) - CAP_MARGIN_TOKENS, 0.0)


def _number(x):
    return int(x) if float(x).is_integer() else float(x)


def run_tokens_of(fitted) -> tuple[float, float] | None:
    """(smallest, largest) run the law file says it was fitted on, or None."""
    sizes = (fitted.diagnostics or {}).get("run_tokens")
    if isinstance(sizes, dict) and all(isinstance(sizes.get(k), (int, float)) for k in ("min", "max")):
        return float(sizes["min"]), float(sizes["max"])
    return None


def extrapolation_line(budgets, run_tokens: tuple[float, float] | None, runs: str | None = None) -> str | None:
    """One line: how far each budget lies past the largest run the law was fitted on (`runs`: how
    the runs are described, default their sizes); a warning beyond VALIDATED_EXTRAPOLATION_RATIO.
    None when the run sizes are not known."""
    if run_tokens is None:
        return None
    budgets = np.asarray(budgets, dtype=float).reshape(-1)
    ratios = budgets / run_tokens[1]
    shown = ", ".join(f"{b:.4g} is {r:.3g}x" for b, r in zip(budgets, ratios))
    runs = runs or f"the law was fitted on (runs of {run_tokens[0]:.4g} to {run_tokens[1]:.4g} tokens)"
    line = f"extrapolation: {shown} the largest run {runs}"
    if ratios.max() > VALIDATED_EXTRAPOLATION_RATIO:
        line = (f"warning: {line}; past {VALIDATED_EXTRAPOLATION_RATIO:g}x the experiments saw the law's weights "
                "fall behind stratified and its predicted losses miss by ~0.5 nats: size the runs nearer the "
                "target (mix/sweep --design-budget)")
    return line


def check_budgets(budgets) -> np.ndarray:
    """Budgets as a float array; a one-line error for a budget that is not a positive number."""
    out = np.asarray(budgets, dtype=np.float64).reshape(-1)
    if out.size == 0:
        raise MixjaxError("`budgets`: give at least one budget (tokens)")
    for b in out:
        if not np.isfinite(b) or b <= 0:
            raise MixjaxError(f"`budgets`: must be a positive number of tokens, got {b:g}")
    return out


def weight_bounds(
    domains: list[str],
    budgets_B: np.ndarray,
    min_weight: Mapping[str, float] | None = None,
    max_weight: Mapping[str, float] | None = None,
    available: Mapping[str, float] | None = None,
    max_epochs: float | None = None,
):
    """Per-domain lower (K,) and per-budget upper (B, K) weight bounds, checked for feasibility.

    The upper bound includes the data cap available_i * max_epochs / budget (domains without an
    `available` entry are uncapped). One-line errors name the setting and domain.
    """
    K = len(domains)
    lower = np.zeros(K)
    upper = np.ones(K)
    for setting, values, target in (("min_weight", min_weight, lower), ("max_weight", max_weight, upper)):
        for d, x in (values or {}).items():
            if d not in domains:
                raise MixjaxError(f"`{setting}`: unknown domain {d!r}; the law's domains are {domains}")
            if not np.isfinite(x) or x < 0 or x > 1:
                raise MixjaxError(f"`{setting}`: {d}={x:g} must be in [0, 1]")
            target[domains.index(d)] = x
    for j, d in enumerate(domains):
        if lower[j] > upper[j]:
            raise MixjaxError(f"`min_weight` {d}={lower[j]:g} exceeds `max_weight` {d}={upper[j]:g}")
    if lower.sum() > 1 + 1e-12:
        raise MixjaxError(f"`min_weight`: the minimum weights sum to {lower.sum():g} > 1")
    cap = np.full(K, np.inf)
    if available:
        if max_epochs is None:
            max_epochs = DEFAULT_MAX_EPOCHS
        if not np.isfinite(max_epochs) or max_epochs <= 0:
            raise MixjaxError(f"`max_epochs`: must be a positive number, got {max_epochs:g}")
        for d, n in available.items():
            if d not in domains:
                raise MixjaxError(f"`available`: unknown domain {d!r}; the law's domains are {domains}")
            if not np.isfinite(n) or n < 0:
                raise MixjaxError(f"`available`: {d}={n:g} must be a non-negative number of tokens")
            cap[domains.index(d)] = cap_tokens(n, max_epochs)
    upper_BxK = np.minimum(upper[None, :], cap[None, :] / budgets_B[:, None])
    for b, budget in enumerate(budgets_B):
        if upper_BxK[b].sum() < 1 - 1e-12:
            raise MixjaxError(
                f"budget {budget:g}: the weight caps allow only {upper_BxK[b].sum() * budget:g} "
                f"tokens (`max_weight`, `available` x `max_epochs`); lower the budget or raise a cap"
            )
        short = [d for j, d in enumerate(domains) if lower[j] > upper_BxK[b, j] + 1e-12]
        if short:
            raise MixjaxError(
                f"budget {budget:g}: `min_weight` for {short[0]} needs more tokens than "
                f"`available` x `max_epochs` allows"
            )
    upper_BxK = np.maximum(upper_BxK, lower[None, :])
    return lower, upper_BxK


def optimize(
    fitted,
    budgets,
    *,
    min_weight: Mapping[str, float] | None = None,
    max_weight: Mapping[str, float] | None = None,
    available: Mapping[str, float] | None = None,
    max_epochs: float | None = None,
    max_iters: int = 500,
    tol: float = 1e-10,
) -> WeightsResult:
    """Optimal weights of a `FittedLaw` at each budget (tokens), in float64, all budgets at once."""
    import jax
    import jax.numpy as jnp

    budgets_B = check_budgets(budgets)
    lower, upper_BxK = weight_bounds(
        fitted.domains, budgets_B, min_weight, max_weight, available, max_epochs
    )
    n_budgets = len(budgets_B)
    if available:  # the optimum without the data cap too, in the same solve
        _, free_BxK = weight_bounds(fitted.domains, budgets_B, min_weight, max_weight)
        budgets_B, upper_BxK = np.concatenate([budgets_B, budgets_B]), np.concatenate([upper_BxK, free_BxK])
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), fitted.params)
        weights, losses, converged = _solve_many_compiled(
            params,
            jnp.asarray(budgets_B / fitted.token_unit),
            jnp.asarray(lower),
            jnp.asarray(upper_BxK),
            law=fitted.law,
            max_iters=max_iters,
            tol=tol,
        )
        weights, losses, converged = map(np.asarray, (weights, losses, converged))
    if not np.all(np.isfinite(losses)):
        raise MixjaxError("the law predicts a non-finite loss at the optimum; check its parameters")
    data = {}
    if available:
        data = dict(available={d: float(n) for d, n in available.items()},
                    max_epochs=float(DEFAULT_MAX_EPOCHS if max_epochs is None else max_epochs),
                    unconstrained=weights[n_budgets:])
    return WeightsResult(
        fitted.law.name, list(fitted.domains), budgets_B[:n_budgets], weights[:n_budgets], losses[:n_budgets],
        converged[:n_budgets], run_tokens=run_tokens_of(fitted), **data
    )
