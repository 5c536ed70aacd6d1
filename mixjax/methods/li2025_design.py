"""Li et al.'s perturbation design (Algorithm 1): a base run with n tokens of every domain, then
each domain alone scaled by each factor while the others stay at n: 1 + len(factors) x K runs."""

from __future__ import annotations

from mixjax.errors import MixjaxError
from mixjax.methods.base import ProposedRun

DEFAULT_FACTORS = (0.25, 0.5, 2.0, 3.0)


def perturbation_runs(domains: list[str], base_tokens_per_domain: float,
                      factors=DEFAULT_FACTORS) -> list[ProposedRun]:
    """The base run and its perturbations, each with its own total budget."""
    if len(domains) < 2:
        raise MixjaxError("li2025 needs at least 2 domains")
    if base_tokens_per_domain <= 0:
        raise MixjaxError("--budget-tokens must be positive")
    if any(f <= 0 or f == 1 for f in factors):
        raise MixjaxError(f"--factors {list(factors)}: each factor must be positive and not 1")

    def run(name: str, tokens: dict[str, float]) -> ProposedRun:
        total = sum(tokens.values())
        return ProposedRun(name, {d: n / total for d, n in tokens.items()}, int(round(total)))

    n = float(base_tokens_per_domain)
    runs = [run("base", {d: n for d in domains})]
    for d in domains:
        for f in factors:
            runs.append(run(f"{d}-x{f:g}", {o: n * f if o == d else n for o in domains}))
    return runs
