"""Skill-It (Chen et al., 2023) as the LMO framework casts it: a linear dynamic law whose A is the
skills graph, learned from single-domain runs, scaled by the current validation losses.

Prerequisites: K runs, each on one domain alone (`single_fraction` of the budget each; default 1/K
so together they cost about one budget; the Aioli reproduction trained each for the full run).
The online run is the final model: before its first step the initial model is evaluated as the
single runs were (the trainer's evaluation settings) and the graph is A_ij = relative drop of
loss i after training on j alone (`skillit_graph`). Then every `update_steps` steps (and at step
0) it evaluates, and the weights are exp(eta * sum_i A_ij L_i) with L the validation losses
summed over the last `window` evaluations (`skillit_weights`).
"""

from __future__ import annotations

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.base import ProposedRun
from mixjax.methods.online_callback import OnlineMethodCallback
from mixjax.methods.online_rules import skillit_graph, skillit_weights


class SkillIt:
    """Defaults: the Aioli reproduction's eta 0.2, update every 500 steps, window 3."""

    name = "skillit"

    def __init__(self, eta: float = 0.2, update_steps: int = 500, window: int = 3,
                 single_fraction: float | None = None):
        if not eta > 0:
            raise MixjaxError(f"--eta {eta}: must be positive")
        if int(update_steps) != update_steps or update_steps < 1:
            raise MixjaxError(f"--update-steps {update_steps}: must be a positive integer")
        if int(window) != window or window < 1:
            raise MixjaxError(f"--window {window}: must be a positive integer")
        if single_fraction is not None and not single_fraction > 0:
            raise MixjaxError(f"--single-fraction {single_fraction}: must be positive")
        self.eta, self.update_steps, self.window = float(eta), int(update_steps), int(window)
        self.single_fraction = single_fraction
        self.loss_after = self.loss_before = None

    # -- prerequisites --------------------------------------------------------------------------
    def prerequisite_runs(self, domains, budget_tokens):
        """One run per domain on that domain alone."""
        if len(domains) < 2:
            raise MixjaxError(f"--method skillit needs at least 2 domains (the data has {len(domains)})")
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

    def make_callback(self, eval_max_batches=None):
        return SkillItCallback(self, eval_max_batches)

    # -- the online run -------------------------------------------------------------------------
    def begin(self, domains, num_steps):
        self.domains, self.num_steps, k = list(domains), int(num_steps), len(domains)
        graph = None
        if self.loss_before is not None:  # None when a resumed run's state is about to be loaded
            if self.loss_after is None or self.loss_after.shape != (k, k):
                raise MixjaxError("skillit: the single-domain runs' losses are missing (run it through mix)")
            graph = skillit_graph(self.loss_before, self.loss_after).tolist()
        self.state = {"graph": graph, "loss_before": None if self.loss_before is None else list(self.loss_before),
                      "loss_after": None if self.loss_after is None else self.loss_after.tolist(),
                      "weights": [1.0 / k] * k, "losses": [], "trajectory": []}

    def weights(self, step: int) -> np.ndarray:
        return np.asarray(self.state["weights"])

    def eval_due(self, step: int) -> bool:
        return step % self.update_steps == 0 and step < self.num_steps

    def observe_train(self, step: int, train_loss: np.ndarray) -> None:
        pass

    def observe_eval(self, step: int, val_loss: np.ndarray) -> None:
        st = self.state
        st["losses"].append(np.asarray(val_loss, np.float64).tolist())
        summed = np.sum(st["losses"][-self.window:], axis=0)
        st["weights"] = skillit_weights(np.asarray(st["graph"]), summed, self.eta).tolist()
        st["trajectory"].append([step, st["weights"]])

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state = state


class SkillItCallback(OnlineMethodCallback):
    """Measures the initial model's validation loss (for the graph) before the run starts."""

    def on_train_start(self, ctx) -> None:
        val = ctx.evaluate()
        self.method.loss_before = np.array([val[d] for d in ctx.domains], np.float64)
        super().on_train_start(ctx)
