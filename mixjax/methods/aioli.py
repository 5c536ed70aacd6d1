"""Aioli (Chen et al., ICLR 2025): learn the linear dynamic mixing law inside the training run.

The run is cut into rounds of `update_steps`. Each round starts with LearnParams: `lp_rounds`
sweeps over the K smoothed one-hot mixtures in a seeded random order, `lp_steps` steps each, with a
validation evaluation before the first interval and after every interval. The loss drops give
beta = A P^T, solved for A and normalised (shifted to be non-negative, scaled to sum 1); the rest
of the round trains on the new weights.

The weights, as the released scripts run them (every one passes `--ema`): an EMA of the
normalised A over rounds, `ema` the weight of the old average, and the weights recomputed every
round *from uniform* as exp(eta * column sums of the EMA), so they stay within a factor e^eta of
uniform. `cumulative=True` is the release without `--ema` (and mixjax's rule before it followed the
scripts): each round's EG step multiplies the previous weights, so a persistent preference keeps
moving them.

The restricted setting: with `prior_weights` the first `prior_steps` train on weights learned
elsewhere. The release then starts the rounds from uniform again (`dynamic_start="uniform"`, the
default), so the prior only shapes the model that LearnParams measures; `dynamic_start="prior"`
starts the EG updates from the prior weights instead.

The schedule is a pure function of the step, so the state to checkpoint is only the weights, the
current round's partial loss drops and the history.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.base import OnlineMethod, format_value, option_specs_of
from mixjax.methods.online_rules import (
    aioli_update, normalise_interactions, smoothed_one_hot, solve_interaction_matrix)


@dataclasses.dataclass
class AioliConfig:
    """Defaults: the released 3-domain settings (papers.md; scripts/arxiv_books_stackexchange)."""

    eta: float = 0.1
    lp_rounds: int = 4
    lp_steps: int = 6
    one_hot_factor: float = 0.5
    update_steps: int = 250
    ema: float | None = 0.5           # weight of the old EMA; None: each round's A alone
    cumulative: bool = False          # accumulate EG steps (the release without --ema)
    normalize_a: bool = True
    diagonal: bool = False
    prior_weights: list[float] | None = None
    prior_steps: int = 0
    dynamic_start: Literal["uniform", "prior"] = "uniform"  # restricted setting: rounds start from the "prior"
    seed: int = 0

    @classmethod
    def released(cls, k: int, **overrides) -> "AioliConfig":
        """What the released scripts ran for 2, 3 or 7 domains (the nearest for other K): 2 domains
        arxiv/stackexchange, 3 arxiv/books/stackexchange (EMA 0.5), 7 the full SlimPajama run
        (update every 200 steps). `cumulative=True` without an explicit `ema` drops the EMA."""
        if k <= 2:
            base = dict(lp_rounds=4, lp_steps=4, eta=0.2, one_hot_factor=0.625, ema=0.1)
        elif k <= 4:
            base = dict(lp_rounds=4, lp_steps=6, eta=0.1, one_hot_factor=0.5, ema=0.5)
        else:
            base = dict(lp_rounds=2, lp_steps=10, eta=1.0, one_hot_factor=0.75, ema=0.1, update_steps=200)
        if overrides.get("cumulative") and "ema" not in overrides:
            base["ema"] = None
        return cls(**{**base, **overrides})


class Aioli(OnlineMethod):
    name = "aioli"
    options = {  # AioliConfig's fields
        "eta": "EG step size",
        "lp_rounds": "LearnParams sweeps per round",
        "lp_steps": "steps per LearnParams interval",
        "one_hot_factor": "weight of the interval's own domain",
        "update_steps": "steps per round",
        "ema": "weight of the old EMA of the interaction matrix; the weights are recomputed from uniform each round",
        "cumulative": "accumulate each round's EG step instead (the release without --ema)",
        "dynamic_start": "restricted setting: after --prior-steps the rounds start from uniform (the release) "
                         "or from --prior-weights",
        "prior_weights": "start from these weights (restricted)",
        "prior_steps": "steps at --prior-weights first",
    }

    def __init__(self, config: AioliConfig | None = None):
        self.config = config or AioliConfig()

    @classmethod
    def create(cls, num_domains: int | None, **options) -> "Aioli":
        """Aioli at the released scripts' settings for `num_domains` (3 when not known yet, see
        `AioliConfig.released`), `options` overriding them."""
        return cls(AioliConfig.released(num_domains or 3, **options))

    @classmethod
    def option_specs(cls):
        return option_specs_of(AioliConfig.__init__, cls.options)

    @classmethod
    def option_defaults(cls, num_domains: int) -> dict:
        return dataclasses.asdict(AioliConfig.released(num_domains))

    @classmethod
    def shown_default(cls, name: str) -> str | None:
        """The released value for 2, 3-4 and more domains where they differ."""
        values = [dataclasses.asdict(AioliConfig.released(k))[name] for k in (2, 3, 5)]
        if len(set(values)) == 1:
            return super().shown_default(name)
        return "{} for 2 domains, {} for 3-4, {} for more".format(
            *("none" if v is None else format_value(v) for v in values))

    # -- schedule (pure functions of the step) -------------------------------------------------
    def begin(self, domains: list[str], num_steps: int) -> None:
        c = self.config
        self.domains, self.num_steps, k = list(domains), num_steps, len(domains)
        if k < 2:
            raise MixjaxError("aioli needs at least 2 domains")
        if not 0 < c.one_hot_factor <= 1 or (c.one_hot_factor == 1 / k and not c.diagonal):
            raise MixjaxError("`one_hot_factor` must be in (0, 1] and not 1/K (the mixtures would be equal)")
        self.lp_length = c.lp_rounds * k * c.lp_steps
        if self.lp_length >= c.update_steps:
            raise MixjaxError(f"`update_steps` {c.update_steps} must exceed LearnParams' "
                              f"lp_rounds x K x lp_steps = {self.lp_length} steps")
        start = np.full(k, 1.0 / k) if c.prior_weights is None else np.asarray(c.prior_weights, np.float64)
        if c.prior_weights is not None and (start.shape != (k,) or abs(start.sum() - 1) > 1e-6 or start.min() < 0):
            raise MixjaxError(f"`prior_weights` must be {k} non-negative numbers summing to 1")
        if c.prior_weights is None and c.prior_steps:
            raise MixjaxError("`prior_steps` needs `prior_weights`")
        if c.ema is not None and not 0 <= c.ema < 1:
            raise MixjaxError(f"`ema` {c.ema}: must be in [0, 1) (the weight of the old average)")
        if c.cumulative and c.ema is not None:
            raise MixjaxError("`cumulative` accumulates each round's A; it takes no `ema`")
        if c.dynamic_start not in ("uniform", "prior"):
            raise MixjaxError(f"`dynamic_start` {c.dynamic_start!r}: must be uniform or prior")
        base = start if c.dynamic_start == "prior" else np.full(k, 1.0 / k)
        self.mixtures = smoothed_one_hot(k, c.one_hot_factor)
        first_update = c.prior_steps + self.lp_length  # the step of the first round's update
        self.note = None if num_steps > first_update else (
            f"aioli: {num_steps:,} steps end before its first weight update (step {first_update:,}: "
            f"--prior-steps + lp_rounds x K x lp_steps = {c.prior_steps} + {c.lp_rounds} x {k} x {c.lp_steps}); "
            f"it only runs LearnParams and its weights stay at {'the prior' if c.dynamic_start == 'prior' else 'uniform'} "
            "(raise the budget, or lower --lp-rounds/--lp-steps)")
        self.state = {"start": start.tolist(), "base": base.tolist(), "weights": base.tolist(), "ema_a": None,
                      "loss_prev": None, "drops": np.zeros((k, k)).tolist(),
                      "trajectory": [[0, start.tolist()]], "raw_a": [], "a": []}

    def _round_offset(self, step: int):
        s = step - self.config.prior_steps
        return (None, None) if s < 0 else divmod(s, self.config.update_steps)

    def _order(self, round_index: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, round_index])
        k = len(self.domains)
        return np.concatenate([rng.permutation(k) for _ in range(self.config.lp_rounds)])

    def weights(self, step: int) -> np.ndarray:
        r, offset = self._round_offset(step)
        if r is None:
            return np.asarray(self.state["start"])
        if offset < self.lp_length:
            return self.mixtures[self._order(r)[offset // self.config.lp_steps]]
        return np.asarray(self.state["weights"])

    def probing(self, step: int) -> bool:
        """Whether batch `step` is a LearnParams interval: it samples a probe mixture, not the weights."""
        r, offset = self._round_offset(step)
        return r is not None and offset < self.lp_length

    def eval_due(self, step: int) -> bool:
        r, offset = self._round_offset(step)
        if r is None or step >= self.num_steps:
            return False
        return offset <= self.lp_length and offset % self.config.lp_steps == 0

    # -- observations ---------------------------------------------------------------------------
    # Aioli learns from validation losses only: `observe_train` is the base class's (nothing)
    def observe_eval(self, step: int, val_loss: np.ndarray) -> None:
        c, st = self.config, self.state
        r, offset = self._round_offset(step)
        val_loss = np.asarray(val_loss, np.float64)
        if offset == 0:
            st["loss_prev"], st["drops"] = val_loss.tolist(), np.zeros_like(self.mixtures).tolist()
            return
        j = self._order(r)[offset // c.lp_steps - 1]
        drops = np.asarray(st["drops"])
        drops[:, j] += np.asarray(st["loss_prev"]) - val_loss
        st["drops"], st["loss_prev"] = drops.tolist(), val_loss.tolist()
        if offset == self.lp_length:
            self._update(step, drops / c.lp_rounds)

    def _update(self, step: int, drops: np.ndarray) -> None:
        c, st = self.config, self.state
        raw = solve_interaction_matrix(drops, self.mixtures, c.diagonal)
        a = normalise_interactions(raw) if c.normalize_a else raw
        if c.cumulative:
            weights = aioli_update(np.asarray(st["weights"]), a, c.eta)
        else:
            ema = c.ema or 0.0
            st["ema_a"] = a.tolist() if st["ema_a"] is None else \
                ((1 - ema) * a + ema * np.asarray(st["ema_a"])).tolist()
            weights = aioli_update(np.asarray(st["base"]), np.asarray(st["ema_a"]), c.eta)
        st["weights"] = weights.tolist()
        st["raw_a"].append(raw.tolist())
        st["a"].append(a.tolist())
        st["trajectory"].append([step, weights.tolist()])
