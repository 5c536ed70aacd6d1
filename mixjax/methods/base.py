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
import inspect
import typing
from typing import Any

import numpy as np

Tokens = typing.NewType("Tokens", int)  # a number of tokens (the command line takes 5M, 500k or 2e7)


@dataclasses.dataclass(frozen=True)
class ProposedRun:
    """One training run an offline method asks for."""

    name: str
    weights: dict[str, float]
    budget_tokens: int


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One keyword of a method's constructor: its default, its type annotation and, for an option
    the command line sets, its help (`Method.options`; None: no flag)."""

    name: str
    default: Any
    hint: Any
    help: str | None


def option_specs_of(function, helps: dict[str, str]) -> dict[str, OptionSpec]:
    """The keyword parameters of `function` (a constructor) as OptionSpecs, with `helps`' help."""
    hints = typing.get_type_hints(function)
    return {p.name: OptionSpec(p.name, p.default, hints.get(p.name), helps.get(p.name))
            for p in list(inspect.signature(function).parameters.values())[1:]  # not self
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class Method:
    """What every method has: a name, its constructor's options, and how it is built."""

    name: str
    # the constructor's keywords that are command-line options (`mixjax mix`/`sweep` make a flag of
    # each: its name, type and default from the signature), with their help
    options: dict[str, str] = {}

    @classmethod
    def create(cls, num_domains: int | None, **options) -> "Method":
        """The method with `options` (a method whose defaults depend on the number of domains uses it)."""
        return cls(**options)

    @classmethod
    def option_specs(cls) -> dict[str, OptionSpec]:
        """Every keyword option of the constructor, following `**kwargs` up to the base classes'."""
        specs = {}
        for klass in inspect.getmro(cls)[:-1]:  # not object
            if "__init__" not in vars(klass):
                continue
            for name, spec in option_specs_of(klass.__init__, cls.options).items():
                specs.setdefault(name, spec)
            if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(klass.__init__).parameters.values()):
                break
        return specs

    @classmethod
    def option_defaults(cls, num_domains: int) -> dict[str, Any]:
        """The value each option takes for `num_domains` domains when not given."""
        return {name: spec.default for name, spec in cls.option_specs().items()}

    @classmethod
    def shown_default(cls, name: str) -> str | None:
        """An option's default as its flag's help shows it (None: the help says it, or a switch)."""
        default = cls.option_specs()[name].default
        return None if default is None or isinstance(default, bool) else format_value(default)


def format_value(value) -> str:
    """A default as the command line writes it: 0.001, 1, 0.25,0.5,2,3."""
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class OfflineMethod(Method):
    """An offline method: `propose` the runs to train, `recommend` weights from their results. The
    members below are the defaults a method overrides where it does more."""

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


class OnlineMethod(Method):
    """An online method; the members below are the defaults a method overrides where it does more:
    runs to train first (`prerequisite_runs`, whose results `use_prerequisites` hands back; with
    `keep_prerequisite_params` their final parameters are kept as a checkpoint), a proxy run
    (`proxy_fraction` of the budget; None: the online run is the final model), the weights it
    recommends (`final_weights`), and the trainer callback that runs it (`make_callback`)."""

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
