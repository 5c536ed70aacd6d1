"""DoGE (Fan et al., 2024) as the LMO framework casts it: a linear dynamic law with
A_ij = <grad of the validation loss of domain i, grad of the training loss of domain j>.

One proxy run (`proxy_fraction` of the budget), sampled at stratified proportions and trained on
sum_j w_j x (mean loss of domain j), as the release does (`sampling="reweight"`; "resample"
samples at the weights instead, see `proxy.py`). Every `update_every` steps, after the step, the
trainer's jitted `Stepper.domain_gradient_alignment` computes A on the batch just trained on and
one validation batch per domain (the cached held-out batches, taken in turn), at the current
parameters. The score of domain j is the release's (`doge_scores`): the alignment of its training
gradient with ONE gradient, that of the mixed validation batch (the mean of the K validation
gradients, so the column mean of A), every gradient clipped to norm 1, times lr over the mean
training-gradient norm, clipped to [0, 5 lr]; times U, since one update stands for U steps. The
weights take an EG step with eta = 1/mu (mu 0.01 for up to 4 domains, 0.1 for more, as the
released scripts set it). The answer is the weights averaged over the proxy run; `run_mix`
trains the final model at them.

`update_every` defaults to 100 rather than DoGE's every step: one update costs about (5K + 1) / 3
training steps (K validation forward+backward passes, one training forward pass and K backward
passes), so for 3 domains an update every 100 steps adds ~5% to the run, and a run of 5000 steps
(the Aioli setting) still gets 50 updates. Other departures: A is taken after the step, not
before it, so the new weights weight the next batch; one gradient of the weighted loss is
clipped, where the release clips each domain's before weighting them.
"""

from __future__ import annotations

import numpy as np

from mixjax.methods.online_callback import OnlineMethodCallback
from mixjax.methods.online_rules import doge_scores, doge_update
from mixjax.methods.proxy import ProxyMethod


class DoGE(ProxyMethod):
    """Defaults: eta = 1 / mu as released (100 for up to 4 domains, 10 for more), an update every
    100 steps, a proxy run as long as the final run, reweighted."""

    name = "doge"

    def __init__(self, eta: float | None = None, update_every: int = 100, proxy_fraction: float = 1.0,
                 sampling: str = "reweight"):
        super().__init__(eta, update_every, proxy_fraction, sampling)

    @staticmethod
    def released_eta(k: int) -> float:
        """1 / mu of the released scripts: mu 0.01 for 2 and 3 domains, 0.1 for 7."""
        return 100.0 if k <= 4 else 10.0

    def prerequisite_runs(self, domains, budget_tokens):
        self.check_domains(domains)
        return []

    def make_callback(self, eval_max_batches=None):
        return DoGECallback(self, eval_max_batches)

    def begin(self, domains, num_steps):
        super().begin(domains, num_steps)
        self.state["eta"] = self.eta if self.eta is not None else self.released_eta(len(domains))
        self.state["alignment"], self.state["scores"] = [], []

    def observe_gradients(self, step: int, measured: dict, lr: float) -> None:
        """What `Stepper.domain_gradient_alignment` measured after batch `step` at learning rate lr:
        A [K, K] (validation domain i, training domain j), the training gradients' norms [K] and the
        validation gradients' Gram matrix [K, K]."""
        scores = doge_scores(measured["alignment"], measured["train_grad_norm"], measured["val_gram"], lr)
        self.state["alignment"].append([step + 1, np.asarray(measured["alignment"], float).tolist()])
        self.state["scores"].append([step + 1, scores.tolist()])
        self._set_weights(step, doge_update(self.weights(step), scores * self.update_every, self.state["eta"]))


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
            self.method.observe_gradients(step, out, info.lr)
        super().on_step(ctx, info)
