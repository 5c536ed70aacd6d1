"""Li et al.'s perturbation design (Algorithm 1) as the runs the li2025 method proposes; the design
itself is `mixjax.observations.perturbation_mixtures`."""

from __future__ import annotations

from mixjax.methods.base import ProposedRun
from mixjax.observations import LI2025_FACTORS as DEFAULT_FACTORS
from mixjax.observations import perturbation_mixtures

__all__ = ["DEFAULT_FACTORS", "perturbation_runs"]


def perturbation_runs(domains: list[str], base_tokens_per_domain: float,
                      factors=DEFAULT_FACTORS) -> list[ProposedRun]:
    """The base run and its perturbations, each with its own total budget."""
    return [ProposedRun(*run) for run in perturbation_mixtures(domains, base_tokens_per_domain, factors)]
