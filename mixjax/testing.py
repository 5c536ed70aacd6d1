"""Runs simulated from a known law, for the tests, the benchmarks and the experiments that check
what the fit and the optimiser recover: no training, the losses are the law's plus noise. (The
runs of li2025's design as a table of tokens: `mixjax.methods.li2025_design.perturbation_design`.)"""

from __future__ import annotations

import numpy as np

from mixjax.observations import Observations


def simulate(fitted_law, runs: list[str], tokens_RxK: np.ndarray, noise: float = 0.0, seed: int = 0):
    """Observations whose losses come from a known law (a `FittedLaw`) plus Gaussian noise."""
    import jax
    import jax.numpy as jnp

    from mixjax.laws import predict

    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), fitted_law.params)
        scaled = jnp.asarray(tokens_RxK / fitted_law.token_unit)
        clean = np.asarray(jax.vmap(lambda t: predict(fitted_law.law, params, t))(scaled))
    rng = np.random.default_rng(seed)
    losses = clean + noise * rng.standard_normal(clean.shape)
    return Observations(list(runs), list(fitted_law.domains), np.asarray(tokens_RxK), losses)
