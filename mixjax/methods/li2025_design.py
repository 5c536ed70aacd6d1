"""li2025's perturbation design (Li et al., Algorithm 1), in one place: the runs the li2025 method
proposes (`perturbation_runs`) and the same runs as a table of tokens (`perturbation_design`, for
runs simulated from a law: tests, benchmarks, experiments). The adaptive design, which picks the
runs one at a time, is beside it (`adaptive_design.py`)."""

from __future__ import annotations

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.base import ProposedRun

DEFAULT_FACTORS = (0.25, 0.5, 2.0, 3.0)


def perturbation_runs(domains: list[str], base_tokens_per_domain: float,
                      factors=DEFAULT_FACTORS) -> list[ProposedRun]:
    """A base run with n tokens of every domain, then each domain alone scaled by each factor while
    the others stay at n: the 1 + len(factors) x K runs, each with its own total budget."""
    if len(domains) < 2:
        raise MixjaxError("li2025 needs at least 2 domains")
    if base_tokens_per_domain <= 0:
        raise MixjaxError("`budget_tokens` must be positive")
    if any(f <= 0 or f == 1 for f in factors):
        raise MixjaxError(f"`factors` {list(factors)}: each factor must be positive and not 1")

    def run(name: str, tokens: dict[str, float]) -> ProposedRun:
        total = sum(tokens.values())
        return ProposedRun(name, {d: n / total for d, n in tokens.items()}, int(round(total)))

    n = float(base_tokens_per_domain)
    runs = [run("base", {d: n for d in domains})]
    for d in domains:
        for f in factors:
            runs.append(run(f"{d}-x{f:g}", {o: n * f if o == d else n for o in domains}))
    return runs


def perturbation_design(domains: list[str], base_tokens: float,
                        factors=DEFAULT_FACTORS) -> tuple[list[str], np.ndarray]:
    """Run names and tokens (1 + K * len(factors), K) of the design."""
    runs = perturbation_runs(list(domains), base_tokens, factors)
    tokens = [[run.weights[d] * run.budget_tokens for d in domains] for run in runs]
    return [run.name for run in runs], np.array(tokens, np.float64)
