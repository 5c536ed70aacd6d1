"""DoGE (Fan et al., 2024) as the LMO framework casts it: a linear dynamic law with
A_ij = <grad of the validation loss of domain i, grad of the training loss of domain j>.

One proxy run (`proxy_fraction` of the budget), sampled at stratified proportions and trained on
sum_j w_j x (mean loss of domain j), as the release does (`sampling="reweight"`; "resample"
samples at the weights instead, see `proxy.py`). Every `update_every` steps, after the step, the
jitted `gradient_alignment` (on the trainer's loss, `Stepper.domain_means`) computes A on the batch just trained on and
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

import weakref
from typing import Literal

import numpy as np

from mixjax.methods.online_callback import OnlineMethodCallback
from mixjax.methods.online_rules import doge_scores, doge_update
from mixjax.methods.proxy import ProxyMethod


class DoGE(ProxyMethod):
    """Defaults: eta = 1 / mu as released (100 for up to 4 domains, 10 for more), an update every
    100 steps, a proxy run as long as the final run, reweighted."""

    name = "doge"
    options = {**ProxyMethod.options, "eta": "EG step size, 1/mu (default as released: 100 for up to 4 domains, "
                                             "10 for more)"}

    def __init__(self, eta: float | None = None, update_every: int = 100, proxy_fraction: float = 1.0,
                 sampling: Literal["reweight", "resample"] = "reweight"):
        super().__init__(eta, update_every, proxy_fraction, sampling)

    @classmethod
    def option_defaults(cls, num_domains: int) -> dict:
        return {**super().option_defaults(num_domains), "eta": cls.released_eta(num_domains)}

    @staticmethod
    def released_eta(k: int) -> float:
        """1 / mu of the released scripts: mu 0.01 for 2 and 3 domains, 0.1 for 7."""
        return 100.0 if k <= 4 else 10.0

    def prerequisite_runs(self, domains, budget_tokens):
        self.check_domains(domains)
        return []

    def make_callback(self, eval_max_batches=None, log=print):
        return DoGECallback(self, eval_max_batches, log)

    def begin(self, domains, num_steps):
        super().begin(domains, num_steps)
        self.state["eta"] = self.eta if self.eta is not None else self.released_eta(len(domains))
        self.state["alignment"], self.state["scores"] = [], []

    def observe_gradients(self, step: int, measured: dict, lr: float) -> None:
        """What `gradient_alignment` measured after batch `step` at learning rate lr:
        A [K, K] (validation domain i, training domain j), the training gradients' norms [K] and the
        validation gradients' Gram matrix [K, K]."""
        scores = doge_scores(measured["alignment"], measured["train_grad_norm"], measured["val_gram"], lr)
        self.state["alignment"].append([step + 1, np.asarray(measured["alignment"], float).tolist()])
        self.state["scores"].append([step + 1, scores.tolist()])
        self._set_weights(step, doge_update(self.weights(step), scores * self.update_every, self.state["eta"]))


class DoGECallback(OnlineMethodCallback):
    """Adds the gradient-alignment matrix every `update_every` steps."""

    def on_step(self, ctx, info) -> None:
        step = info.steps_done - 1  # 0-based, as the method counts
        if self.method.update_due(step):
            turn = self.method.state["updates"]
            val = []
            for d in ctx.domains:
                cached = ctx.validation_arrays(d, self.eval_max_batches)
                val.append(cached[turn % len(cached)])
            out = compiled_alignment(ctx.stepper)(ctx.params, info.batch, ctx.stepper.put_stacked_batches(val))
            out = {k: np.asarray(v, np.float64) for k, v in out.items()}
            self.method.observe_gradients(step, out, info.lr)
        super().on_step(ctx, info)


def gradient_alignment(domain_means, num_domains: int, params, train_b, val_KxB) -> dict:
    """A_ij = <grad of domain i's loss on its validation batch, grad of domain j's loss on the
    training batch> [K, K], the training gradients' norms [K] and the validation gradients' Gram
    matrix [K, K] (the norm of their mean, DoGE's mixed validation gradient, is sqrt(sum of it) / K).
    `domain_means(params, batch)`: each domain's mean token loss [K] (the train step's loss).

    The K validation gradients come one at a time (lax.map); the training batch takes one forward
    pass and K backward passes through its saved residuals (one VJP per domain), each dotted with
    the validation gradients at once, so at most K + 1 gradients are alive and nothing leaves the
    device but the K x K numbers."""
    import jax
    import jax.numpy as jnp
    import optax

    k = num_domains

    def val_grad(args):
        batch, i = args
        return jax.grad(lambda p: domain_means(p, batch)[i])(params)

    val_grads = jax.lax.map(val_grad, (val_KxB, jnp.arange(k)))
    _, pullback = jax.vjp(lambda p: domain_means(p, train_b), params)

    def column(j):
        (grad_j,) = pullback(jax.nn.one_hot(j, k, dtype=jnp.float32))
        dots_K = sum(jnp.dot(v.reshape(k, -1), g.reshape(-1), precision=jax.lax.Precision.HIGHEST)
                     for v, g in zip(jax.tree.leaves(val_grads), jax.tree.leaves(grad_j)))
        return dots_K, optax.tree.norm(grad_j)

    columns_KxK, norms_K = jax.lax.map(column, jnp.arange(k))
    gram_KxK = sum(jnp.dot(v.reshape(k, -1), v.reshape(k, -1).T, precision=jax.lax.Precision.HIGHEST)
                   for v in jax.tree.leaves(val_grads))
    return {"alignment": columns_KxK.T, "train_grad_norm": norms_K, "val_gram": gram_KxK}


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # Stepper -> its jitted alignment


def compiled_alignment(stepper):
    """`gradient_alignment` jitted for a Stepper's shapes and shardings: (params, training batch,
    K stacked validation batches from `put_stacked_batches`) -> replicated results. Compiled on
    first use, once per Stepper."""
    if stepper not in _COMPILED:
        import functools

        import jax

        from mixjax.train.mesh import replicated
        from mixjax.train.step import BATCH_KEYS

        fn = functools.partial(gradient_alignment, stepper.domain_means, stepper.cfg.num_domains)
        batch = {k: stepper.batch_sharding for k in BATCH_KEYS}
        stacked = {k: stepper.stacked_batch_sharding for k in BATCH_KEYS}
        _COMPILED[stepper] = jax.jit(stepper.under_mesh(fn), in_shardings=(stepper.param_shardings, batch, stacked),
                                     out_shardings=replicated(stepper.mesh))
    return _COMPILED[stepper]
