"""Validation loss during a run: the held-out batches (read once per data, batch shape and size,
kept on the host across runs; put on the devices once per run) and per-domain means."""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

# data object -> {(domain, batch_size, seq_len, max_batches, validation_fn): host arrays}: runs of
# one experiment share a PreparedData, so its held-out batches are packed once
_HOST_BATCHES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
RUN_DEFAULT = object()  # max_batches: the run's eval_max_batches (None means every batch)


def validation_arrays(data, domain, batch_size, seq_len, max_batches, validation_fn) -> list:
    """The held-out batches of one domain as host arrays (at most `max_batches`; cached)."""
    try:
        cache = _HOST_BATCHES.setdefault(data, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    key = (domain, batch_size, seq_len, max_batches, validation_fn)
    if key not in cache:
        out = []
        for i, b in enumerate(validation_fn(data, domain, batch_size, seq_len)):
            if max_batches is not None and i >= max_batches:
                break
            out.append(b.arrays())
        cache[key] = out
    return cache[key]


def mean_losses(batch_sums: dict[str, list]) -> dict[str, float]:
    """{domain: mean token loss} from each batch's (loss sum, target count), summed in batch order
    (NaN where a domain has no target)."""
    res = {}
    for d, pairs in batch_sums.items():
        s, c = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        res[d] = s / c if c > 0 else float("nan")
    return res


def per_domain(sums, counts, domains) -> dict[str, float]:
    """Mean loss per domain from summed losses and target counts (NaN where a domain has none)."""
    return {d: (float(s) / float(c) if c > 0 else float("nan")) for d, s, c in zip(domains, sums, counts)}


class Evaluator:
    """Per-domain validation loss of the current (or given) parameters. Each domain's batches go
    to the devices once per run, and every eval step is dispatched before one transfer back, since
    online methods evaluate often. `current_params` returns the parameters being trained."""

    def __init__(self, stepper, data, domains, batch_size, seq_len, max_batches, validation_fn,
                 current_params: Callable[[], Any]):
        self.stepper, self.data, self.domains = stepper, data, list(domains)
        self.batch_size, self.seq_len, self.max_batches = batch_size, seq_len, max_batches
        self.validation_fn, self.current_params = validation_fn, current_params
        self._on_device: dict = {}  # (domain, max_batches) -> device batches

    def arrays(self, domain, max_batches=RUN_DEFAULT) -> list:
        """The cached held-out batches of `domain` (host arrays); default: the run's max_batches."""
        return validation_arrays(self.data, domain, self.batch_size, self.seq_len,
                                 self.max_batches if max_batches is RUN_DEFAULT else max_batches, self.validation_fn)

    def check_measurable(self, max_batches=RUN_DEFAULT) -> None:
        """A one-line error, before training, naming the domains whose held-out batches hold no loss
        target (their validation loss would be NaN)."""
        from mixjax.data.batch import next_token_targets
        from mixjax.errors import MixjaxError

        empty = []
        for d in self.domains:
            arrays = self.arrays(d, max_batches)
            if not any(next_token_targets(a["tokens"], a["segment_ids"], a["loss_mask"])[1].any() for a in arrays):
                empty.append(d)
        if empty:
            raise MixjaxError(f"`seq_len` {self.seq_len}: the validation split of {', '.join(empty)} holds no "
                              "loss target (a response token after another token of its row); its loss would be "
                              "NaN: prepare the domain with longer responses or raise `seq_len`")

    def evaluate(self, eval_domains=None, max_batches=RUN_DEFAULT, params=None) -> dict[str, float]:
        """{domain: mean validation loss} for `eval_domains` (default all), at most `max_batches`
        batches each (default the run's eval_max_batches)."""
        return mean_losses(self.batch_sums(eval_domains, max_batches, params))

    def batch_sums(self, eval_domains=None, max_batches=RUN_DEFAULT, params=None, skip=None) -> dict[str, list]:
        """{domain: [(loss sum, target count) of each batch]}, as `evaluate` sees them; `skip`
        ({domain: n}) leaves out each domain's first n batches (already evaluated with these parameters)."""
        import jax

        params = self.current_params() if params is None else params
        max_batches = self.max_batches if max_batches is RUN_DEFAULT else max_batches
        outputs = {}
        for d in list(eval_domains or self.domains):
            key = (d, max_batches)
            if key not in self._on_device:
                self._on_device[key] = [self.stepper.put_batch(a) for a in self.arrays(d, max_batches)]
            outputs[d] = [self.stepper.eval_step(params, b) for b in self._on_device[key][(skip or {}).get(d, 0):]]
        return {d: [(float(np.sum(m["domain_loss_sum"])), float(np.sum(m["domain_count"]))) for m in ms]
                for d, ms in jax.device_get(outputs).items()}

    def domain_losses(self, batch, params=None) -> np.ndarray:
        """Per-domain mean token loss [K] of the parameters on one batch (NaN where a domain has no target)."""
        import jax

        if not isinstance(batch, dict) or not isinstance(batch.get("tokens"), jax.Array):
            batch = self.stepper.put_batch(batch)
        m = jax.device_get(self.stepper.eval_step(self.current_params() if params is None else params, batch))
        return np.array(list(per_domain(m["domain_loss_sum"], m["domain_count"], self.domains).values()))
