"""Static offline designs: stratified sampling and the simplex grid."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.base import OfflineMethod, ProposedRun, as_weights, uniform


def simplex_grid(k: int, step: float, include_zero: bool = False) -> np.ndarray:
    """All weight vectors with entries in multiples of `step` that sum to 1.

    With step 1/8 and no zero weights, 3 domains give the paper's 21 mixtures
    ({0.125, ..., 0.75}).
    """
    inverse = Fraction(step).limit_denominator(10_000)
    units = int(round(1 / inverse)) if inverse.numerator == 1 else None
    if units is None or abs(units * step - 1) > 1e-9:
        raise MixjaxError(f"`step` {step}: must be 1/n for an integer n")
    low = 0 if include_zero else 1
    if units < low * k:
        raise MixjaxError(f"`step` {step}: too coarse for {k} domains without zero weights")
    points = [c + (units - sum(c),) for c in itertools.product(range(low, units + 1), repeat=k - 1)
              if units - sum(c) >= low]
    return np.array(points, np.float64) / units


class Stratified(OfflineMethod):
    """Uniform weights; no runs needed."""

    name = "stratified"

    def propose(self, domains, budget_tokens):
        return []

    def recommend(self, observations, domains, budget_tokens):
        return as_weights(domains, uniform(len(domains)))


class Grid(OfflineMethod):
    """Train every grid mixture; recommend the one with the lowest total validation loss."""

    name = "grid"
    options = {"step": "weight step (0.125: the paper's 21 mixtures)"}

    def __init__(self, step: float = 0.125, include_zero: bool = False):
        self.step, self.include_zero = step, include_zero

    def propose(self, domains, budget_tokens):
        if len(domains) < 2:
            raise MixjaxError("grid needs at least 2 domains")
        return [ProposedRun(f"grid-{i:03d}", as_weights(domains, w), budget_tokens)
                for i, w in enumerate(simplex_grid(len(domains), self.step, self.include_zero))]

    def recommend(self, observations, domains, budget_tokens):
        """The mixture of the complete run with the lowest total validation loss."""
        obs = observations.select(domains)
        complete = obs.observed.all(axis=1)
        if not complete.any():
            raise MixjaxError("grid: no run has a loss on every domain")
        total_loss = np.where(complete, np.nan_to_num(obs.losses).sum(axis=1), np.inf)
        best = obs.tokens[int(np.argmin(total_loss))]
        return as_weights(domains, best / best.sum())
