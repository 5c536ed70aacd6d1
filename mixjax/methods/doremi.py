"""DoReMi (Xie et al., 2023) as the LMO framework casts it: a diagonal linear dynamic law whose
A_ii is the proxy model's excess loss over a reference model.

Prerequisite: a reference model trained at stratified weights (MIX_DIR/prereq/reference, kept as
a checkpoint), or an existing run given with `reference=`. Proxy run (`proxy_fraction` of the
budget, from the same initialisation): batches are sampled at stratified proportions and the
proxy trains on sum_j w_j x (mean loss of domain j), as the releases do (`sampling="reweight"`;
"resample" samples at the weights instead, see `proxy.py`). After each batch the reference's
per-domain loss on that same batch is computed (a second forward pass) and the weights take an
EG step on the clipped excess loss, smoothed with `smoothing` of the uniform distribution
(`doremi_update`). The answer is the weights averaged over the proxy run; `run_mix` trains the
final model at them.

Departures from the releases: excess losses are clipped per domain mean (the paper clips per
token); a domain absent from a batch keeps its previous excess (as the Aioli reproduction does);
the new weights weight the next batch's loss, not the batch they were computed on; one gradient of
the weighted loss is clipped, not each domain's. With `update_every` U > 1 the reference pass runs
only every U steps and the step size is multiplied by U, so the weights drift as far as with
per-step updates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.base import ProposedRun, as_weights, uniform
from mixjax.methods.online_callback import OnlineMethodCallback
from mixjax.methods.online_rules import doremi_update
from mixjax.methods.proxy import ProxyMethod


class DoReMi(ProxyMethod):
    """Defaults: the DoReMi paper's eta 1 and smoothing 1e-3, an update every step, reference and
    proxy runs as long as the final run (the Aioli reproduction used eta 0.01)."""

    name = "doremi"
    keep_prerequisite_params = True
    options = {**ProxyMethod.options,
               "proxy_fraction": "proxy and reference run size as a fraction of the budget",
               "smoothing": "weight of the uniform distribution mixed in",
               "reference": "an existing reference run with a checkpoint (default: train one at stratified weights)"}

    def __init__(self, eta: float = 1.0, smoothing: float = 1e-3, update_every: int = 1,
                 proxy_fraction: float = 1.0, reference: str | None = None,
                 sampling: Literal["reweight", "resample"] = "reweight"):
        super().__init__(eta, update_every, proxy_fraction, sampling)
        if not 0 <= smoothing <= 1:
            raise MixjaxError(f"`smoothing` {smoothing}: must be in [0, 1]")
        self.smoothing, self.reference = float(smoothing), reference
        self.reference_dir = None if reference is None else Path(reference)

    def prerequisite_runs(self, domains, budget_tokens):
        """The reference run at stratified weights, as long as the proxy (none with `reference`)."""
        self.check_domains(domains)
        if self.reference is not None:
            from mixjax.train.checkpoint import find_checkpoint
            try:
                find_checkpoint(self.reference)
            except MixjaxError:
                raise MixjaxError(f"`reference`: {self.reference} holds no mixjax checkpoint (train one "
                                  "with `checkpoint_every`, or leave `reference` out)") from None
            return []
        return [ProposedRun("reference", as_weights(domains, uniform(len(domains))), self.proxy_tokens(budget_tokens))]

    def use_prerequisites(self, results) -> None:
        if self.reference is None:
            self.reference_dir = results["reference"].dir

    def make_callback(self, eval_max_batches=None, log=print):
        return DoReMiCallback(self, eval_max_batches, log)

    def begin(self, domains, num_steps):
        super().begin(domains, num_steps)
        self.state["excess"] = [0.0] * len(domains)

    def observe_losses(self, step: int, proxy_loss: np.ndarray, reference_loss: np.ndarray) -> None:
        """The proxy's and the reference's per-domain losses on batch `step` (NaN: domain absent)."""
        proxy, ref = np.asarray(proxy_loss, np.float64), np.asarray(reference_loss, np.float64)
        seen = np.isfinite(proxy) & np.isfinite(ref)
        previous = np.asarray(self.state["excess"])
        proxy, ref = np.where(seen, proxy, previous), np.where(seen, ref, 0.0)  # absent: previous excess
        self.state["excess"] = np.maximum(proxy - ref, 0.0).tolist()
        new = doremi_update(self.weights(step), proxy, ref, self.eta * self.update_every, self.smoothing)
        self._set_weights(step, new)


class DoReMiCallback(OnlineMethodCallback):
    """Adds the reference model's per-domain loss on each batch the proxy trained on."""

    reference_params = None

    def _reference(self, ctx):
        if self.reference_params is None:  # loaded lazily: a resumed run skips on_train_start
            from mixjax.train.checkpoint import read_meta, restore_params

            ref_dir = self.method.reference_dir
            if ref_dir is None:
                raise MixjaxError("doremi: no reference run (train it through run_mix, or give `reference`)")
            model = read_meta(ref_dir).get("model")
            if model != ctx.stepper.cfg.model.to_dict():
                raise MixjaxError(f"`reference`: {ref_dir} is a model of another shape than the proxy's")
            self.reference_params, _ = restore_params(ref_dir, ctx.stepper.abstract_params,
                                                      ctx.stepper.param_shardings)
        return self.reference_params

    def on_step(self, ctx, info) -> None:
        step = info.steps_done - 1  # 0-based, as the method counts
        if self.method.update_due(step):
            reference = ctx.domain_losses(info.batch, self._reference(ctx))
            proxy = np.array([info.train_loss[d] for d in ctx.domains], np.float64)
            self.method.observe_losses(step, proxy, reference)
        super().on_step(ctx, info)
