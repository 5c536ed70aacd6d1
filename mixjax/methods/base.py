"""The two kinds of mixture method.

An *offline* method proposes training runs (mixtures and budgets), reads their results as
observations, and recommends weights. An *online* method runs inside one training run: before
each step the trainer asks it for the weights of that step's batch, after each step it sees the
per-domain training losses, and when it asks for an evaluation it sees the per-domain validation
losses. Its state is a JSON-able dict, saved in the trainer's checkpoints.

Every method subclasses one of the two base classes below, whose members are the defaults: the
runners (`mixjax.runners`) call them without asking whether a method has them.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ProposedRun:
    """One training run an offline method asks for."""

    name: str
    weights: dict[str, float]
    budget_tokens: int


class OfflineMethod:
    """An offline method: `propose` the runs to train, `recommend` weights from their results. The
    members below are the defaults a method overrides where it does more."""

    name: str
    adaptive = False  # proposes its runs one at a time as results come in (li2025 --adaptive)
    add_runs = False  # may add runs once the first ones are in (`extra_runs`)
    along_run = 0  # evaluations per run recorded as observations of their own (li2025)
    design_budget: int | None = None  # the budget its runs are sized for (None: the target budget)
    caps_weights = False  # keeps each domain's tokens within `available` x `max_epochs` (run_mix
    available: dict | None = None  # sets them from the data when not given)
    max_epochs: float | None = None
    fitted = None  # the law fitted by the last recommendation (a FittedLaw), written as law.json
    result = None  # the WeightsResult of the last recommendation (passes, caps that bind)

    def propose(self, domains: list[str], budget_tokens: int) -> list[ProposedRun]:
        """The runs to train (names unique, stable across calls: a sweep resumes by name)."""
        raise NotImplementedError

    def recommend(self, observations, domains: list[str], budget_tokens: int) -> dict[str, float]:
        """Weights for the target budget, from the observed runs."""
        raise NotImplementedError

    def extra_runs(self, observations, domains: list[str], budget_tokens: int) -> list[ProposedRun]:
        """Runs to add (once) when the proposed ones turn out not to determine the answer (li2025)."""
        return []

    def run_config(self, config, run: ProposedRun):
        """The training settings of one of its runs (li2025 evaluates its runs as they train)."""
        return config

    def run_selection(self) -> dict | None:
        """How each run's loss is chosen, recorded in sweep.json when not empty (None: the final loss)."""
        return None


class OnlineMethod:
    """An online method; the members below are the defaults a method overrides where it does more:
    runs to train first (`prerequisite_runs`, whose results `use_prerequisites` hands back; with
    `keep_prerequisite_params` their final parameters are kept as a checkpoint), a proxy run
    (`proxy_fraction` of the budget; None: the online run is the final model), the weights it
    recommends (`final_weights`), and the trainer callback that runs it (`make_callback`)."""

    name: str
    keep_prerequisite_params = False
    proxy_fraction: float | None = None
    note: str | None = None  # said once when the run starts (set by `begin`)

    def prerequisite_runs(self, domains: list[str], budget_tokens: int) -> list[ProposedRun]:
        return []

    def use_prerequisites(self, results) -> None:
        """The finished prerequisite runs, {name: PrerequisiteResult}, before the online run."""

    def proxy_tokens(self, budget_tokens: int) -> int:
        return int(self.proxy_fraction * budget_tokens)

    def make_callback(self, eval_max_batches: int | None = None, log=print):
        """The trainer callback that runs the method (a subclass measures what the method needs
        beyond per-domain losses)."""
        from mixjax.methods.online_callback import OnlineMethodCallback

        return OnlineMethodCallback(self, eval_max_batches=eval_max_batches, log=log)

    def begin(self, domains: list[str], num_steps: int) -> None:
        """Called once before the first step (not again after a resume)."""
        raise NotImplementedError

    def weights(self, step: int) -> np.ndarray:
        """Weights for the batch of `step` (0-based)."""
        raise NotImplementedError

    def sampling_weights(self, step: int) -> np.ndarray | None:
        """The proportions the batch of `step` is sampled at when they differ from `weights`
        (which then weight the loss instead); None: sample at `weights`."""
        return None

    def probing(self, step: int) -> bool:
        """Whether the batch of `step` samples a probe mixture rather than the method's weights."""
        return False

    def current_weights(self) -> np.ndarray:
        """The weights the method holds now (those it recommends), whatever the batch samples."""
        return np.asarray(self.state_dict()["weights"])

    def final_weights(self) -> np.ndarray:
        """The weights it recommends after its run (default: the last)."""
        return self.current_weights()

    def eval_due(self, step: int) -> bool:
        """Whether validation losses are wanted after `step` steps have been taken."""
        return False

    def observe_train(self, step: int, train_loss: np.ndarray) -> None:
        """Per-domain training loss of the batch of `step` (NaN where the domain had no tokens)."""

    def observe_eval(self, step: int, val_loss: np.ndarray) -> None:
        """Per-domain validation loss after `step` steps."""

    def state_dict(self) -> dict:
        """Its state, JSON-able (saved in the trainer's checkpoints)."""
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def uniform(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def as_weights(domains: list[str], weights) -> dict[str, float]:
    return {d: float(w) for d, w in zip(domains, np.asarray(weights, np.float64))}
