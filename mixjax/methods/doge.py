"""DoGE (Fan et al., 2024) as the LMO framework casts it: a linear dynamic law with
A_ij = <grad of the validation loss of domain i, grad of the training loss of domain j>.

One proxy run (`proxy_fraction` of the budget). Every `update_every` steps, after the step, the
trainer's jitted `Stepper.domain_gradient_alignment` computes A on the batch just trained on and
one validation batch per domain (the cached held-out batches, taken in turn), at the current
parameters; A is scaled as DoGE's released code does (x learning rate / mean training-gradient
norm, `doge_scaled_alignment`) and times U, since one update stands for U steps, and the weights
take an EG step on its column sums (`doge_update`). The answer is the weights averaged over the
proxy run; `run_mix` trains the final model at them.

`update_every` defaults to 100 rather than DoGE's every step: one update costs about (5K + 1) / 3
training steps (K validation forward+backward passes, one training forward pass and K backward
passes), so for 3 domains an update every 100 steps adds ~5% to the run, and a run of 5000 steps
(the Aioli setting) still gets 50 updates. Departures: gradients are not clipped before the dot
products (the released code clips each to norm 1), and A is taken after the step, not before it.
"""

from __future__ import annotations

import numpy as np

from mixjax.methods.online_callback import OnlineMethodCallback
from mixjax.methods.online_rules import doge_scaled_alignment, doge_update
from mixjax.methods.proxy import ProxyMethod


class DoGE(ProxyMethod):
    """Defaults: eta 100 (the released code's 1 / mu with mu = 0.01), an update every 100 steps,
    a proxy run as long as the final run."""

    name = "doge"

    def __init__(self, eta: float = 100.0, update_every: int = 100, proxy_fraction: float = 1.0):
        super().__init__(eta, update_every, proxy_fraction)

    def prerequisite_runs(self, domains, budget_tokens):
        self.check_domains(domains)
        return []

    def make_callback(self, eval_max_batches=None):
        return DoGECallback(self, eval_max_batches)

    def begin(self, domains, num_steps):
        super().begin(domains, num_steps)
        self.state["alignment"] = []

    def observe_alignment(self, step: int, alignment: np.ndarray, train_grad_norm: np.ndarray, lr: float) -> None:
        """A [K, K] (validation domain i, training domain j) after batch `step`, at learning rate lr."""
        scaled = doge_scaled_alignment(alignment, train_grad_norm, lr, self.update_every)
        self.state["alignment"].append([step + 1, np.asarray(alignment, float).tolist()])
        self._set_weights(step, doge_update(self.weights(step), scaled, self.eta))


class DoGECallback(OnlineMethodCallback):
    """Adds the gradient-alignment matrix every `update_every` steps."""

    def on_step(self, ctx, info) -> None:
        step = info.step - 1
        if self.method.update_due(step):
            turn = self.method.state["updates"]
            val = []
            for d in ctx.domains:
                cached = ctx.validation_arrays(d, self.eval_max_batches)
                val.append(cached[turn % len(cached)])
            out = ctx.stepper.domain_gradient_alignment(ctx.params, info.batch,
                                                        ctx.stepper.put_stacked_batches(val))
            out = {k: np.asarray(v, np.float64) for k, v in out.items()}
            self.method.observe_alignment(step, out["alignment"], out["train_grad_norm"], info.lr)
        super().on_step(ctx, info)
