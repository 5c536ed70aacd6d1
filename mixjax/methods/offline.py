"""Offline methods that fit a model of loss against mixture to their own runs:
li2025 (perturbation design + effective-data-transfer law), dml (Dirichlet runs + log-linear
law) and regmix (many small Dirichlet runs + a regression of total loss on the mixture)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.adaptive_design import DEFAULT_TOLERANCE
from mixjax.methods.base import OfflineMethod, ProposedRun, Tokens, as_weights
from mixjax.methods.li2025_design import DEFAULT_FACTORS, perturbation_runs


def dirichlet_runs(prefix: str, domains: list[str], n_runs: int, budget_tokens: int, seed: int,
                   alpha: float = 1.0) -> list[ProposedRun]:
    rng = np.random.default_rng([seed, len(domains), n_runs])
    mixtures = rng.dirichlet(np.full(len(domains), alpha), size=n_runs)
    return [ProposedRun(f"{prefix}-{i:03d}", as_weights(domains, w), int(budget_tokens))
            for i, w in enumerate(mixtures)]


class _LawMethod(OfflineMethod):
    """Fit `law_name` to the observations and optimise it at the target budget."""

    law_name: str
    caps_weights = True
    r_star: float | None = None  # li2025-repeat's R* when fixed (Li2025)
    target_budget: int | None = None  # the budget repetition-matched runs are cut for (Li2025)

    def __init__(self, fit_options=None, available: dict | None = None, max_epochs: float | None = None):
        # available: each domain's training tokens; the optimum keeps tokens_i <= available_i x max_epochs
        # (`run_mix` sets them from the data when not given)
        self._fit_options, self.available, self.max_epochs = fit_options, available, max_epochs
        self.fitted = None  # the FittedLaw of the last recommendation (written as law.json)
        self.result = None  # its WeightsResult at the budget: passes, caps that bind, the optimum without them

    @property
    def fit_options(self):
        """The FitOptions the fit uses: those given, else the defaults (least squares)."""
        from mixjax.fit import FitOptions

        return self._fit_options or FitOptions()

    def fixed_fields(self, domains) -> dict | None:
        """The values of the law's unfitted fields (li2025-repeat: each domain's unique training
        tokens, from `available`), or None for a law that fits all its fields."""
        from mixjax import laws

        if not laws.get(self.law_name).fixed_fields:
            return None
        if not self.available or any(d not in self.available for d in domains):
            raise MixjaxError(f"law {self.law_name} needs each domain's training tokens (`available`; "
                              "the prepared data's, which `mix` passes)")
        return {"unique": {d: float(self.available[d]) for d in domains}, "R_star": self.r_star,
                "match_budget": self.target_budget}

    def recommend(self, observations, domains, budget_tokens):
        from mixjax import laws
        from mixjax.fit import fit
        from mixjax.optimize import optimize

        obs = observations.select(domains)
        self.fitted = fit(laws.get(self.law_name), obs, token_unit=1e6, budgets=[budget_tokens],
                          options=self.fit_options, fixed=self.fixed_fields(domains))
        self.result = optimize(self.fitted, [budget_tokens], available=self.available, max_epochs=self.max_epochs)
        return as_weights(domains, self.result.weights[0])


REST_FACTORS = (2.0, 0.5, 3.0, 0.25)
SELECTION_BATCHES = 1  # validation batches per domain that pick a perturbation run's best evaluation
PERTURBATION_EVALS = 3  # evaluations per perturbation run, the last step's included
PERTURBATION_BATCHES = 4  # validation batches per domain a perturbation run's loss is measured on


def _count(name: str, value, zero_means: str) -> int:
    """`value` as a whole number >= 0 (0 meaning `zero_means`), else a one-line error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise MixjaxError(f"`{name}`: must be a whole number >= 0 (0: {zero_means}); got {value}")
    return int(value)


class Li2025(_LawMethod):
    """Algorithm 1: a base run of `base_fraction` x budget split evenly, each domain perturbed by
    `factors`; fit the li2025 law on every run's loss on every domain; optimise at the budget.
    `design_budget` B sizes the runs as for a budget B (at most the target) while the law is still
    optimised at the target: cheaper runs, used at a ratio target / largest run (default B = target).

    As the authors ran it: the fit minimises a Huber loss of `huber_delta` (default 1e-3, their
    delta; 0 or None = least squares; it replaces the huber_delta of `fit_options`, which set the
    rest), and each run records its best evaluation, not its final loss (they keep the checkpoint
    of lowest validation loss): `run_config` has the sweep evaluate a run every
    ceil(steps / `perturbation_evals`) steps (at most PERTURBATION_EVALS evaluations by default, the
    last step's included) on the first SELECTION_BATCHES validation
    batches of each domain (the same ones each time; `select_max_batches` sets another number) and
    keep the parameters of the lowest mean, whose loss is then measured once and reported; no
    checkpoint (0 = the final loss). That reported loss, the one the law is fitted to, is on the
    first `perturbation_batches` (PERTURBATION_BATCHES) validation batches of each domain, the same
    in every run, unless the user gives the runs' `eval_max_batches` (0: the whole split): on the
    bundled data the whole split is as many tokens as a run trains, and measuring it made
    evaluation half of a sweep (benchmarks/README.md). The final run at the budget still reports
    the whole split. One departure: the authors fit domain i's law
    to the runs that vary its own tokens, in which the other domains' tokens m stay fixed, so they
    pin down only k_i m^alpha_i; mixjax fits every run's loss on every domain (runs perturbing
    another domain change m), which identifies the transfer terms k_i and alpha_i apart.

    When the runs leave some domain's law under-determined (at most as many observed losses as
    free parameters: the rule of `fit`'s diagnostics["under_determined"], e.g. a design with one
    factor), `extra_runs` proposes, once, runs that keep one domain at the base n and scale all the
    others (by 2, then 0.5, 3, 0.25 while more are needed; K runs per factor): they vary the other
    domains' tokens, which the transfer terms k, alpha need, and each adds an observation to every
    domain's law. Names ("<domain>-rest-x2") are stable, so a killed sweep resumes."""

    name = "li2025"
    law_name = "li2025"
    options = {
        "factors": "perturbation factors",
        "base_fraction": "base run size as a fraction of the budget",
        "add_runs": "do not add runs when the fit would be under-determined",
        "huber_delta": "fit with a Huber loss of this delta (the paper's); 0 = least squares",
        "perturbation_evals": "evaluate each perturbation run at most N times (every ceil(steps / N) steps) and "
                              "record its best evaluation, as the paper keeps the best checkpoint; 0 = the final loss",
        "perturbation_batches": "measure each perturbation run's loss (the one the law is fitted to) on the first N "
                                "validation batches of each domain, the same in every run, unless --eval-max-batches "
                                "is given; 0 = the whole split (the final run always reports the whole split)",
        "adaptive": "train the runs one at a time, each the one that most narrows the optimal weights' "
                    "intervals (`mixjax next`), until every 90% interval is narrower than --tolerance or "
                    "--max-runs runs are done",
        "max_runs": "with --adaptive, at most N runs in all (default 1 + 4K, the fixed design's count)",
        "tolerance": "with --adaptive, stop when every weight's 90% interval is narrower "
                     f"(default {DEFAULT_TOLERANCE:g})",
        "law": "the law fitted (default li2025; li2025-repeat with --target-budget); li2025-repeat counts a "
               "domain's repeated tokens as Muennighoff et al.'s effective data, from the data's training tokens",
        "r_star": "with --law li2025-repeat, fix R* (repetitions at which a repeated token's value has decayed "
                  "by 1/e; their fit: 15); default fitted per domain",
        "target_budget": "cut each domain's training data to run budget / T for each run, so it repeats as often "
                         "as in a run of T tokens; the law li2025-repeat then learns how repetition pays (R*)",
        "along_run": "train the runs at a constant learning rate and record N evaluations of each, every one an "
                     "observation of the fit (0: one per run)",
        "scales": "the perturbation design at each of these sizes of its base run (e.g. 1,0.25: runs at two sizes)",
        "design_budget": "size the perturbation runs as for this budget (e.g. 500k; at most --budget-tokens, its "
                         "default) and optimise the law at --budget-tokens; weights.json records the runs' sizes "
                         "and the ratio target / largest run",
    }

    def __init__(self, base_fraction: float = 0.25, factors: tuple[float, ...] = DEFAULT_FACTORS,
                 add_runs: bool = True, huber_delta: float | None = 1e-3, perturbation_evals: int = PERTURBATION_EVALS,
                 perturbation_batches: int = PERTURBATION_BATCHES,
                 adaptive: bool = False, max_runs: int | None = None, tolerance: float | None = None,
                 law: Literal["li2025", "li2025-pairwise", "li2025-repeat"] | None = None,
                 r_star: float | None = None, target_budget: Tokens | None = None, along_run: int = 0,
                 scales: tuple[float, ...] = (1.0,), design_budget: Tokens | None = None, **kwargs):
        super().__init__(**kwargs)
        self._set_repetition_options(law, r_star, target_budget, along_run, scales, adaptive)
        if design_budget is not None and (isinstance(design_budget, bool) or not isinstance(design_budget, (int, np.integer))
                                          or design_budget < 1):
            raise MixjaxError(f"`design_budget`: must be a whole number of tokens >= 1, got {design_budget!r}")
        if design_budget is not None and adaptive:
            raise MixjaxError("`design_budget` sizes li2025's fixed design; the `adaptive` design sizes its own runs")
        # the budget the perturbation runs are sized for (None: the target budget the law is optimised at)
        self.design_budget = None if design_budget is None else int(design_budget)
        if not adaptive and (max_runs is not None or tolerance is not None):
            raise MixjaxError("`max_runs` and `tolerance` apply to li2025 with `adaptive`")
        if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, (int, np.integer))
                                     or max_runs < 1):
            raise MixjaxError(f"`max_runs`: must be a whole number >= 1, got {max_runs!r}")
        if tolerance is not None and not (np.isfinite(tolerance) and tolerance > 0):
            raise MixjaxError(f"`tolerance`: must be a positive number, got {tolerance!r}")
        # adaptive design (mixjax.runners.adaptive_sweep): runs one at a time until the optimum is
        # known to `tolerance`, at most `max_runs` (default 1 + 4K, the fixed design's count)
        self.adaptive, self.max_runs, self.tolerance = bool(adaptive), max_runs, tolerance
        if not 0 < base_fraction:
            raise MixjaxError("`base_fraction` must be positive")
        if huber_delta is not None and not (np.isfinite(huber_delta) and huber_delta >= 0):
            raise MixjaxError(f"`huber_delta`: must be a positive delta, or 0 for least squares; got {huber_delta:g}")
        self.base_fraction, self.factors, self.add_runs = base_fraction, tuple(factors), bool(add_runs)
        self.huber_delta = float(huber_delta) if huber_delta else None
        self.perturbation_evals = _count("perturbation_evals", perturbation_evals, "the final loss")
        self.perturbation_batches = _count("perturbation_batches", perturbation_batches, "the whole split")

    def _set_repetition_options(self, law, r_star, target_budget, along_run, scales, adaptive) -> None:
        """Check and keep the options of issue 24's variants: the law (li2025-repeat: repetition-
        aware, `r_star` fixed or fitted), repetition-matched runs (`target_budget`), observations
        along each run (`along_run`) and the design at several sizes (`scales`). The law defaults to
        li2025, and to li2025-repeat with `target_budget`: runs on cut data saturate as the target
        will, which the li2025 law, extrapolating in tokens, reads as a small data exponent
        (results/repetition_sim.md: it then does far worse than stratified)."""
        if law is None:
            law = "li2025-repeat" if target_budget is not None else "li2025"
        if law not in ("li2025", "li2025-pairwise", "li2025-repeat"):
            raise MixjaxError(f"`law`: li2025 fits li2025, li2025-pairwise or li2025-repeat, not {law!r}")
        if r_star is not None and (law != "li2025-repeat" or not (np.isfinite(r_star) and r_star > 0)):
            raise MixjaxError(f"`r_star`: a positive number, for law li2025-repeat only; got {r_star!r} with {law}")
        if target_budget is not None and (isinstance(target_budget, bool) or not target_budget > 0):
            raise MixjaxError(f"`target_budget`: must be a positive number of tokens, got {target_budget!r}")
        if target_budget is not None and along_run:
            raise MixjaxError("`target_budget`: the evaluations along a run (`along_run`) saw less of its cut "
                              "data than the run's budget says; give one or the other")
        if isinstance(along_run, bool) or not isinstance(along_run, (int, np.integer)) or along_run < 0 \
                or along_run == 1:
            raise MixjaxError(f"`along_run`: evaluations per run recorded as observations, 0 (off) or >= 2; "
                              f"got {along_run!r}")
        scales = tuple(float(x) for x in scales)
        if not scales or len(set(scales)) != len(scales) or not all(np.isfinite(x) and x > 0 for x in scales):
            raise MixjaxError(f"`scales`: distinct positive sizes of the design, got {list(scales)}")
        if adaptive and (law != "li2025" or target_budget or along_run or scales != (1.0,)):
            raise MixjaxError("`adaptive`: the adaptive design fits law li2025 to whole runs; it takes no "
                              "law, target_budget, along_run or scales")
        self.law_name, self.r_star = law, None if r_star is None else float(r_star)
        self.target_budget = None if target_budget is None else int(target_budget)
        self.along_run, self.scales = int(along_run), scales

    @property
    def fit_options(self):
        """The FitOptions given (or the defaults), with this method's Huber delta."""
        return dataclasses.replace(super().fit_options, huber_delta=self.huber_delta)

    def run_selection(self) -> dict:
        """How each run's loss is chosen, as recorded in sweep.json ({} = the final loss)."""
        bounded = {"eval_max_batches_default": self.perturbation_batches} if self.perturbation_batches else {}
        if self.along_run:
            return {"evaluations": self.along_run, "val_loss": "every evaluation, one observation each",
                    "schedule": "constant", **bounded}
        if not self.perturbation_evals:
            return bounded
        return {"evaluations": self.perturbation_evals, "val_loss": "best evaluation",
                "select_max_batches_default": SELECTION_BATCHES, **bounded}

    def run_config(self, config, run: ProposedRun):
        """The training settings of one of this method's runs: `config` evaluated every
        ceil(steps / perturbation_evals) steps (at most that many evaluations) on `select_max_batches` (default SELECTION_BATCHES)
        batches per domain, reporting the loss of the lowest mean's parameters on the run's
        `eval_max_batches` (`select_best`, no checkpoint); `config` itself when perturbation_evals is 0.
        Without the user's `eval_max_batches`, the runs' is `perturbation_batches` (when not 0).
        With `along_run`: a constant learning rate after warm-up (every evaluation is then a valid
        point of the loss against tokens) and `along_run` evaluations, each an observation. With
        `target_budget` T: each domain cut to run budget / T of its training examples."""
        steps = max(1, config.steps_for(run.budget_tokens))
        if self.perturbation_batches and config.eval_max_batches is None:
            config = dataclasses.replace(config, eval_max_batches=self.perturbation_batches)
        if self.along_run:
            config = dataclasses.replace(config, schedule="constant", eval_every=max(1, steps // self.along_run),
                                         select_best=False)
        elif self.perturbation_evals:
            subset = SELECTION_BATCHES if config.select_max_batches is None else config.select_max_batches
            config = dataclasses.replace(config, eval_every=-(-steps // self.perturbation_evals),
                                         select_best=True, select_max_batches=subset)
        if self.target_budget:
            config = dataclasses.replace(config, train_subset=min(1.0, int(run.budget_tokens) / self.target_budget))
        return config

    def run_budget(self, budget_tokens) -> int:
        """The budget the perturbation runs are sized for: `design_budget`, else the target itself;
        a design budget above the target is a one-line error (the law would be used below its runs)."""
        if self.design_budget is None:
            return int(budget_tokens)
        if self.design_budget > budget_tokens:
            raise MixjaxError(f"`design_budget` {self.design_budget:,} exceeds the target budget {int(budget_tokens):,}: "
                              "the runs are sized for a budget at most the target")
        return self.design_budget

    def _per_domain(self, domains, budget_tokens) -> int:
        return int(self.base_fraction * self.run_budget(budget_tokens) / len(domains))

    def propose(self, domains, budget_tokens):
        runs = []
        for scale in self.scales:
            design = perturbation_runs(domains, self._per_domain(domains, budget_tokens) * scale, self.factors)
            runs += [run if scale == 1 else ProposedRun(f"{run.name}-s{scale:g}", run.weights, run.budget_tokens)
                     for run in design]
        self.check_target_budget(runs, budget_tokens)
        return runs

    def check_target_budget(self, runs, budget_tokens) -> None:
        """A one-line error, before any training, when `target_budget` is below the runs' budget."""
        if self.target_budget is None:
            return
        largest = max([int(budget_tokens)] + [int(r.budget_tokens) for r in runs])
        if self.target_budget < largest:
            raise MixjaxError(f"`target_budget` {self.target_budget:,} is smaller than the run budget {largest:,}: "
                              "runs cut to budget / target would need more than all the data")

    def extra_runs(self, observations, domains, budget_tokens) -> list[ProposedRun]:
        """The runs to add when the observed ones leave a domain's law under-determined ([] if not),
        counting the parameters the fit moves (li2025-repeat with `r_star` fixed: one fewer)."""
        from mixjax import laws
        from mixjax.fit import bind_fixed

        if not self.add_runs:
            return []
        law = bind_fixed(laws.get(self.law_name), list(domains), self.fixed_fields(domains), scale=1.0)
        n_free = law.n_free(len(domains))
        counts = observations.select(domains).observed.sum(axis=0) if len(observations.runs) else np.zeros(len(domains))
        missing = int(n_free + 1 - counts.min())  # fit flags a domain with <= n_free observations
        if missing <= 0:
            return []
        n = float(self._per_domain(domains, budget_tokens))
        runs = []
        for factor in REST_FACTORS[:-(-missing // len(domains))]:
            for d in domains:
                tokens = {o: n if o == d else n * factor for o in domains}
                total = sum(tokens.values())
                runs.append(ProposedRun(f"{d}-rest-x{factor:g}", {o: t / total for o, t in tokens.items()},
                                        int(round(total))))
        return runs


class DataMixingLaws(_LawMethod):
    """DML (Ye et al.): Dirichlet mixtures at the target budget, a static log-linear law."""

    name = "dml"
    law_name = "loglinear"
    options = {"n_runs": "number of Dirichlet runs (default 2K + 2)"}

    def __init__(self, n_runs: int | None = None, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n_runs, self.seed = n_runs, seed

    def propose(self, domains, budget_tokens):
        k = len(domains)
        n = self.n_runs or 2 * k + 2
        if n < k + 2:
            raise MixjaxError(f"dml: `n_runs` {n} is too few; the log-linear law needs at least K + 2 = {k + 2}")
        return dirichlet_runs("dml", domains, n, budget_tokens, self.seed)


def quadratic_features(p_NxK: np.ndarray) -> np.ndarray:
    """[p_j, p_j p_l (j <= l)]: enough to bend towards an interior optimum."""
    k = p_NxK.shape[1]
    upper = np.triu_indices(k)
    return np.concatenate([p_NxK, (p_NxK[:, :, None] * p_NxK[:, None, :])[:, upper[0], upper[1]]], axis=1)


class RegMix(OfflineMethod):
    """RegMix (Liu et al.): many small Dirichlet runs, a ridge regression of total validation loss
    on quadratic features of the mixture, and the mean of the best `top_k` of many sampled
    mixtures as the answer (RegMix averages its top predictions)."""

    name = "regmix"
    caps_weights = True
    options = {"n_runs": "number of Dirichlet runs (default 4K + 4)"}

    def __init__(self, n_runs: int | None = None, budget_fraction: float = 0.25, ridge: float = 1e-4,
                 n_candidates: int = 100_000, top_k: int = 100, seed: int = 0, available: dict | None = None,
                 max_epochs: float | None = None):
        # available / max_epochs: only mixtures within each domain's training tokens x max_epochs are candidates
        self.available, self.max_epochs = available, max_epochs
        self.n_runs, self.budget_fraction, self.ridge = n_runs, budget_fraction, ridge
        self.n_candidates, self.top_k, self.seed = n_candidates, top_k, seed
        self.coefficients = None

    def propose(self, domains, budget_tokens):
        k = len(domains)
        n = self.n_runs or 4 * k + 4
        n_features = k + k * (k + 1) // 2
        if n < n_features:
            raise MixjaxError(f"regmix: `n_runs` {n} is too few for {n_features} regression features")
        return dirichlet_runs("regmix", domains, n, int(self.budget_fraction * budget_tokens), self.seed)

    def recommend(self, observations, domains, budget_tokens):
        obs = observations.select(domains)
        complete = obs.observed.all(axis=1)
        if complete.sum() < 2:
            raise MixjaxError("regmix: fewer than 2 runs have a loss on every domain")
        p = obs.tokens[complete] / obs.tokens[complete].sum(axis=1, keepdims=True)
        y = obs.losses[complete].sum(axis=1)
        x = np.concatenate([np.ones((len(p), 1)), quadratic_features(p)], axis=1)
        penalty = self.ridge * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # do not shrink the intercept
        self.coefficients = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        rng = np.random.default_rng(self.seed)
        candidates = rng.dirichlet(np.ones(len(domains)), size=self.n_candidates)
        if self.available:
            from mixjax.optimize import weight_bounds

            _, upper = weight_bounds(list(domains), np.array([float(budget_tokens)]),
                                     available={d: n for d, n in self.available.items() if d in domains},
                                     max_epochs=self.max_epochs)
            candidates = candidates[(candidates <= upper[0]).all(axis=1)]
            if len(candidates) < self.top_k:
                raise MixjaxError(f"regmix: fewer than {self.top_k} of {self.n_candidates:,} sampled mixtures fit the "
                                  "data cap (training tokens x max_epochs); raise `max_epochs` or lower the budget")
        predicted = np.concatenate([np.ones((len(candidates), 1)), quadratic_features(candidates)], 1) @ self.coefficients
        best = candidates[np.argsort(predicted)[:self.top_k]].mean(axis=0)
        return as_weights(domains, best / best.sum())
