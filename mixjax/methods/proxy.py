"""What DoReMi and DoGE share: an online run that is only a proxy. The weights start uniform, an EG
update every `update_every` steps moves them, and the answer is their average over the proxy run
(weighted by the steps each was used); `run_mix` then trains the final model at that average.

How the proxy uses its weights, `sampling`: "reweight" (the default, as both releases do) samples
every batch at stratified (uniform) proportions and trains on sum_j w_j x (mean loss of domain j),
so every domain keeps ~1/K of each batch and its loss or gradient stays measurable however small
its weight; "resample" (mixjax's rule before it followed the releases) samples each batch at the
current weights, so a domain near the smoothing floor gets a few tokens or none."""

from __future__ import annotations

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.methods.base import OnlineMethod


class ProxyMethod(OnlineMethod):
    options = {
        "eta": "EG step size",
        "update_every": "steps between weight updates",
        "proxy_fraction": "proxy run size as a fraction of the budget",
        "sampling": "sample the proxy stratified and weight each domain's loss (reweight, the releases) or "
                    "sample at the current weights (resample)",
    }

    def __init__(self, eta: float | None, update_every: int, proxy_fraction: float, sampling: str = "reweight"):
        if eta is not None and not eta > 0:
            raise MixjaxError(f"`eta` {eta}: must be positive")
        if sampling not in ("reweight", "resample"):
            raise MixjaxError(f"`sampling` {sampling!r}: must be reweight or resample")
        if int(update_every) != update_every or update_every < 1:
            raise MixjaxError(f"`update_every` {update_every}: must be a positive integer")
        if not 0 < proxy_fraction:
            raise MixjaxError(f"`proxy_fraction` {proxy_fraction}: must be positive")
        self.eta = None if eta is None else float(eta)
        self.update_every, self.proxy_fraction, self.sampling = int(update_every), float(proxy_fraction), sampling

    def check_domains(self, domains) -> None:
        if len(domains) < 2:
            raise MixjaxError(f"`method` {self.name} needs at least 2 domains (the data has {len(domains)})")

    # -- the online-method protocol -------------------------------------------------------------
    def begin(self, domains: list[str], num_steps: int) -> None:
        self.check_domains(domains)
        if self.update_every > num_steps:
            raise MixjaxError(f"`update_every` {self.update_every} exceeds the proxy run's {num_steps} steps: "
                              "the weights would never move; lower it or raise the budget")
        self.domains, self.num_steps, k = list(domains), int(num_steps), len(domains)
        self.state = {"weights": [1.0 / k] * k, "since": 0, "weighted_sum": [0.0] * k, "updates": 0}

    def weights(self, step: int) -> np.ndarray:
        return np.asarray(self.state["weights"])

    def sampling_weights(self, step: int) -> np.ndarray | None:
        """The proportions batches are sampled at when they differ from `weights` (reweighting:
        stratified, the weights enter the loss instead); None: sample at `weights`."""
        return None if self.sampling == "resample" else np.full(len(self.domains), 1.0 / len(self.domains))

    def update_due(self, step: int) -> bool:
        """Whether an update follows the training of batch `step` (0-based)."""
        return (step + 1) % self.update_every == 0

    def _set_weights(self, step: int, weights: np.ndarray) -> None:
        """New weights from batch `step + 1` on; the old ones were used for batches since..step."""
        st = self.state
        used = step + 1 - st["since"]
        st["weighted_sum"] = (np.asarray(st["weighted_sum"]) + used * np.asarray(st["weights"])).tolist()
        st["weights"], st["since"], st["updates"] = np.asarray(weights, float).tolist(), step + 1, st["updates"] + 1

    def final_weights(self) -> np.ndarray:
        """The weights averaged over the steps of the run (each weighted by the steps it was used)."""
        st = self.state
        total = np.asarray(st["weighted_sum"]) + (self.num_steps - st["since"]) * np.asarray(st["weights"])
        return total / total.sum()
