"""Skill-It (Chen et al., 2023) as the LMO framework casts it: a linear dynamic law whose A is the
skills graph, learned from single-domain runs, scaled by the current validation losses.

Prerequisites: K runs, each on one domain alone (`single_fraction` of the budget each; default 1/K
so together they cost about one budget). The online run is the final model: before its first step
the initial model is evaluated as the single runs were (the trainer's evaluation settings) and the
graph is A_ij = relative drop of loss i after training on j alone (`skillit_graph`).

The online rule follows the released code (HazyResearch/aioli, trainer/skillit_trainer.py and
scripts/*/skillit/run.sh), with the weights p_j proportional to exp(eta * sum_i A_ij L_i) from
uniform (`skillit_weights`; the release's graph is our A transposed):
- the first weights, before any evaluation, use L = 1: p_j proportional to exp(eta * sum_i A_ij);
- the validation loss is evaluated every max(1, num_steps // `evaluations`) steps from step 0 (the
  release's num_ckpts = 20: every 250 of 5000 steps, every 2000 of 40000);
- every `update_steps` steps (default 500 for up to 6 domains, 400 for more, as the released 2-,
  3- and 7-domain scripts) the weights are recomputed with L the SUM of the last `window` (3)
  evaluations taken before the update step (one at the update step itself is not yet in);
- eta 0.2.
Evaluations at or after the last update feed no update and are skipped (the release takes them
for its logs only). `evaluations=None` keeps mixjax's earlier cadence: evaluate at step 0 and at
each update (the weights of step 0 from that evaluation's losses) and sum the last `window` of
those, the update's own evaluation included, a window twice as long in steps.

What remains a departure: the graph comes from single-domain runs of 1/K of the budget each (the
release trained each for the full run); the release's evaluation at step c is taken after c + 1
steps (ours after c); and the release sets off-diagonal graph entries equal to 1 to 0.5 (which
only matters for binary graphs, never for ours of relative loss drops).
"""

from __future__ import annotations

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.base import OnlineMethod, ProposedRun
from mixjax.methods.online_callback import OnlineMethodCallback
from mixjax.methods.online_rules import skillit_graph, skillit_weights


class SkillIt(OnlineMethod):
    """Defaults: the released settings, eta 0.2, 20 evaluations per run, an update every 500 steps
    (400 for more than 6 domains) from the sum of the last 3 evaluations' losses."""

    name = "skillit"
    options = {
        "eta": "EG step size",
        "update_steps": "steps per round (default 500, 400 for more than 6 domains)",
        "window": "evaluations whose losses are summed",
        "single_fraction": "each single-domain run's size as a fraction of the budget (default 1/K)",
        "evaluations": "validation evaluations per run, every num_steps/N steps from step 0",
    }

    def __init__(self, eta: float = 0.2, update_steps: int | None = None, window: int = 3,
                 single_fraction: float | None = None, evaluations: int | None = 20):
        if not eta > 0:
            raise MixjaxError(f"`eta` {eta}: must be positive")
        if update_steps is not None and (int(update_steps) != update_steps or update_steps < 1):
            raise MixjaxError(f"`update_steps` {update_steps}: must be a positive integer")
        if int(window) != window or window < 1:
            raise MixjaxError(f"`window` {window}: must be a positive integer")
        if single_fraction is not None and not single_fraction > 0:
            raise MixjaxError(f"`single_fraction` {single_fraction}: must be positive")
        if evaluations is not None and (int(evaluations) != evaluations or evaluations < 1):
            raise MixjaxError(f"`evaluations` {evaluations}: must be a positive integer")
        self.eta, self.window = float(eta), int(window)
        self.update_steps = None if update_steps is None else int(update_steps)
        self.evaluations = None if evaluations is None else int(evaluations)
        self.single_fraction = single_fraction
        self.loss_after = self.loss_before = None

    @classmethod
    def option_defaults(cls, num_domains: int) -> dict:
        return {**super().option_defaults(num_domains), "update_steps": cls.released_update_steps(num_domains),
                "single_fraction": 1 / num_domains}

    @staticmethod
    def released_update_steps(k: int) -> int:
        """Steps per round of the released scripts: 500 for up to 6 domains, 400 for more."""
        return 500 if k <= 6 else 400

    # -- prerequisites --------------------------------------------------------------------------
    def prerequisite_runs(self, domains, budget_tokens):
        """One run per domain on that domain alone."""
        if len(domains) < 2:
            raise MixjaxError(f"`method` skillit needs at least 2 domains (the data has {len(domains)})")
        fraction = self.single_fraction if self.single_fraction is not None else 1 / len(domains)
        return [ProposedRun(f"single-{d}", {o: float(o == d) for o in domains}, int(fraction * budget_tokens))
                for d in domains]

    def use_prerequisites(self, results) -> None:
        """Row j: every domain's validation loss after the run on domain j alone."""
        rows = []
        for d in self.domains_of(results):
            prerequisite = results[f"single-{d}"]
            losses = [prerequisite.result["val_loss"].get(o) for o in self.domains_of(results)]
            if any(v is None or not np.isfinite(v) for v in losses):
                raise MixjaxError(f"{prerequisite.dir / 'result.json'}: a validation loss is missing; "
                                  f"delete {prerequisite.dir} to retrain it")
            rows.append(losses)
        self.loss_after = np.array(rows, np.float64)

    @staticmethod
    def domains_of(results) -> list[str]:
        return [name.removeprefix("single-") for name in results]

    def make_callback(self, eval_max_batches=None, log=print):
        return SkillItCallback(self, eval_max_batches, log)

    # -- the online run -------------------------------------------------------------------------
    def begin(self, domains, num_steps):
        self.domains, self.num_steps, k = list(domains), int(num_steps), len(domains)
        self.every = self.update_steps if self.update_steps is not None else self.released_update_steps(k)
        self.eval_every = None if self.evaluations is None else max(1, self.num_steps // self.evaluations)
        self.last_update = (self.num_steps - 1) // self.every * self.every  # 0: no update in the run
        graph, weights = None, np.full(k, 1.0 / k)
        if self.loss_before is not None:  # None when a resumed run's state is about to be loaded
            if self.loss_after is None or self.loss_after.shape != (k, k):
                raise MixjaxError("skillit: the single-domain runs' losses are missing (run it through mix)")
            graph = skillit_graph(self.loss_before, self.loss_after)
            weights = skillit_weights(graph, np.ones(k), self.eta)  # the release's first weights
            graph = graph.tolist()
        self.state = {"graph": graph, "loss_before": None if self.loss_before is None else list(self.loss_before),
                      "loss_after": None if self.loss_after is None else self.loss_after.tolist(),
                      "update_steps": self.every, "eval_steps": self.eval_every,
                      "weights": weights.tolist(), "loss_steps": [], "losses": [],
                      "trajectory": [[0, weights.tolist()]]}

    def weights(self, step: int) -> np.ndarray:
        return np.asarray(self.state["weights"])

    def eval_due(self, step: int) -> bool:
        if self.eval_every is None:  # the earlier cadence: at step 0 and at each update
            return step % self.every == 0 and step < self.num_steps
        return step % self.eval_every == 0 and step < self.last_update  # later ones feed no update

    def observe_train(self, step: int, train_loss: np.ndarray) -> None:
        done = step + 1  # the callback calls this before the evaluation after `done` steps
        if self.eval_every is not None and done % self.every == 0 and done <= self.last_update:
            self._update(done)

    def observe_eval(self, step: int, val_loss: np.ndarray) -> None:
        st = self.state
        st["loss_steps"].append(int(step))
        st["losses"].append(np.asarray(val_loss, np.float64).tolist())
        if self.eval_every is None:
            self._update(step)

    def _update(self, step: int) -> None:
        """Weights from the losses summed over the last `window` evaluations observed so far."""
        st = self.state
        if not st["losses"]:
            return
        summed = np.sum(st["losses"][-self.window:], axis=0)
        st["weights"] = skillit_weights(np.asarray(st["graph"]), summed, self.eta).tolist()
        if st["trajectory"] and st["trajectory"][-1][0] == step:
            st["trajectory"][-1] = [step, st["weights"]]
        else:
            st["trajectory"].append([step, st["weights"]])


class SkillItCallback(OnlineMethodCallback):
    """Measures the initial model's validation loss (for the graph) before the run starts."""

    def on_train_start(self, ctx) -> None:
        val = ctx.evaluate()
        self.method.loss_before = np.array([val[d] for d in ctx.domains], np.float64)
        super().on_train_start(ctx)
