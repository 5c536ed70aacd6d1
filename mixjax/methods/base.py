"""The two kinds of mixture method.

An *offline* method proposes training runs (mixtures and budgets), reads their results as
observations, and recommends weights. An *online* method runs inside one training run: before
each step the trainer asks it for the weights of that step's batch, after each step it sees the
per-domain training losses, and when it asks for an evaluation it sees the per-domain validation
losses. Its state is a JSON-able dict, saved in the trainer's checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class ProposedRun:
    """One training run an offline method asks for."""

    name: str
    weights: dict[str, float]
    budget_tokens: int


class OfflineMethod(Protocol):
    name: str

    def propose(self, domains: list[str], budget_tokens: int) -> list[ProposedRun]:
        """The runs to train (names unique, stable across calls: a sweep resumes by name)."""

    def recommend(self, observations, domains: list[str], budget_tokens: int) -> dict[str, float]:
        """Weights for the target budget, from the observed runs."""

    # Optional: `extra_runs(observations, domains, budget_tokens) -> list[ProposedRun]`, runs to add
    # (once) when the proposed ones turn out not to determine the answer (li2025).


class OnlineMethod(Protocol):
    """Optional members, which `run_mix` uses when present:

    - `prerequisite_runs(domains, budget_tokens) -> list[ProposedRun]`: runs to train first
      (DoReMi's reference, Skill-It's single-domain runs); `keep_prerequisite_params = True` keeps
      their final parameters (a checkpoint); `use_prerequisites({name: PrerequisiteResult})`
      hands their results back before the online run.
    - `proxy_fraction`: the online run is a proxy of this fraction of the budget, and a final run
      trains at `final_weights()` (DoReMi, DoGE); absent or None: the online run is the final model.
    - `final_weights() -> np.ndarray`: the weights it recommends after its run (default: the last).
    - `make_callback(eval_max_batches)`: a trainer callback that measures what the method needs
      beyond per-domain losses (default: `OnlineMethodCallback`).
    """

    name: str

    def begin(self, domains: list[str], num_steps: int) -> None:
        """Called once before the first step (not again after a resume)."""

    def weights(self, step: int) -> np.ndarray:
        """Weights for the batch of `step` (0-based)."""

    def eval_due(self, step: int) -> bool:
        """Whether validation losses are wanted after `step` steps have been taken."""

    def observe_train(self, step: int, train_loss: np.ndarray) -> None:
        """Per-domain training loss of the batch of `step` (NaN where the domain had no tokens)."""

    def observe_eval(self, step: int, val_loss: np.ndarray) -> None:
        """Per-domain validation loss after `step` steps."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def uniform(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def as_weights(domains: list[str], weights) -> dict[str, float]:
    return {d: float(w) for d, w in zip(domains, np.asarray(weights, np.float64))}
