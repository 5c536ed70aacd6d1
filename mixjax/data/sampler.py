"""The weighted mixture sampler: a resumable stream of packed batches whose domain composition
follows the weights.

Each domain is an endless stream of its training examples, in a fresh seeded permutation every
epoch. A batch of B x L tokens takes from each domain exactly the tokens the allocation gives it:
the allocation rounds the *cumulative* token target of every domain (the integral of the weights
over steps) with largest remainders, so no rounding error accumulates over the run and a domain
with a tiny weight still gets its tokens as soon as they add up to one. Changing the weights only
changes future targets: nothing is rebuilt or reshuffled. The whole state is a few integers per
domain, so it checkpoints into JSON and restores to exactly the same next batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from mixjax.data.batch import PackedBatch
from mixjax.data.packing import cut, pack_rows, pack_stream
from mixjax.data.prepared import PreparedData
from mixjax.errors import MixjaxError
from mixjax.mixture import Mixture


class DomainExhaustedError(MixjaxError):
    """A domain would be repeated more than `max_epochs` times."""


def allocate(owed: np.ndarray, weights: np.ndarray, total: int) -> np.ndarray:
    """Tokens per domain for one batch of `total`: floor(w * total) each, and the few left over to
    the domains owed the most (cumulative target minus delivered).

    Every batch is then within one token of w * total (floor or ceil), and, empirically over random
    weights and weight changes (tests/test_data_sampler.py), no domain's cumulative count ever
    strays a whole token from its cumulative target.
    """
    ideal = weights * total
    counts = np.floor(ideal).astype(np.int64)
    rest = total - int(counts.sum())
    eligible = ideal - counts > 1e-12
    if rest > eligible.sum():  # only with floating-point slack in the weights
        eligible = weights > 0
    score = np.where(eligible, owed - counts, -np.inf)
    counts[np.argsort(-score, kind="stable")[:rest]] += 1
    return counts


class _Subset:
    """The examples of `source` at `indices`: a random-access source (len() and [i])."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def subset_indices(size: int, fraction: float, seed: int, index: int) -> np.ndarray:
    """The examples a run with `train_subset` = fraction draws from: the first max(1, round(fraction
    x size)) of a permutation seeded by (seed, domain index), in stored order. The same seed gives
    nested subsets: a smaller fraction's examples are all in a larger one's."""
    keep = max(1, int(round(fraction * size)))
    order = np.random.default_rng([seed, index, 0x5B5E7]).permutation(size)
    return np.sort(order[:keep])


def subset_training_data(data: PreparedData, fraction: float, seed: int) -> tuple[list, np.ndarray]:
    """Each domain's training examples cut to `fraction` (seeded; 1 = all of them), and the
    training tokens each then has."""
    if not (np.isfinite(fraction) and 0 < fraction <= 1):
        raise MixjaxError(f"`train_subset`: must be a fraction in (0, 1], got {fraction!r}")
    sources, tokens = [], []
    for i, d in enumerate(data.domains):
        source = data.split(d, "train")
        if fraction >= 1:
            sources.append(source)
            tokens.append(data.train_tokens()[d])
            continue
        subset = _Subset(source, subset_indices(len(source), fraction, seed, i))
        sources.append(subset)
        tokens.append(sum(len(subset[j]["tokens"]) for j in range(len(subset))))
    return sources, np.array(tokens, np.int64)


class _DomainStream:
    """One domain's training examples in a seeded permutation per epoch, consumed token by token."""

    def __init__(self, source, index: int, seed: int):
        self.source, self.index, self.seed = source, index, seed
        self.size = len(source)
        self.epoch = self.position = self.offset = 0
        self._order_epoch, self._order = None, None
        self._current_key, self._current = None, None

    def _example(self):
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.index, self.epoch])
            self._order, self._order_epoch = rng.permutation(self.size), self.epoch
        key = (self.epoch, self.position)
        if self._current_key != key:
            record = self.source[int(self._order[self.position])]
            self._current = (np.asarray(record["tokens"], np.int32), np.asarray(record["loss_mask"], bool))
            self._current_key = key
        return self._current

    def take(self, n: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        pieces = []
        while n > 0:
            tokens, mask = self._example()
            take = min(n, len(tokens) - self.offset)
            pieces.append((tokens[self.offset:self.offset + take],
                           mask[self.offset:self.offset + take], self.index))
            self.offset += take
            n -= take
            if self.offset == len(tokens):
                self.offset, self.position = 0, self.position + 1
                if self.position == self.size:
                    self.position, self.epoch = 0, self.epoch + 1
        return pieces

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "offset": self.offset}

    def load(self, state: dict) -> None:
        self.epoch, self.position, self.offset = state["epoch"], state["position"], state["offset"]


class MixtureSampler:
    """Packed [batch_size, seq_len] batches mixing the domains of `data` by `weights`."""

    def __init__(self, data: PreparedData, weights, *, batch_size: int, seq_len: int,
                 num_steps: int, seed: int = 0, max_epochs: float = 10, train_subset: float = 1.0):
        """`num_steps`: the batches of the run, as the trainer counts them (`TrainConfig.run_steps`)."""
        if batch_size < 1 or seq_len < 2:
            raise MixjaxError("`batch_size` must be >= 1 and `seq_len` >= 2")
        if max_epochs <= 0:
            raise MixjaxError("`max_epochs` must be positive")
        if num_steps < 1:
            raise MixjaxError(f"`num_steps` must be >= 1, got {num_steps}")
        self.data, self.domains = data, data.domains
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.max_epochs = max_epochs
        self.batch_tokens = batch_size * seq_len
        self.num_steps = int(num_steps)
        self.weights = Mixture.of(weights, self.domains).weights
        # train_subset < 1: each domain repeats as often as a run train_subset^-1 times larger will
        sources, self._available = subset_training_data(data, train_subset, seed)
        self.train_subset = float(train_subset)
        self._check_budget()
        self._streams = [_DomainStream(source, i, seed) for i, source in enumerate(sources)]
        self.step = 0
        self._target = np.zeros(len(self.domains), np.float64)   # cumulative tokens owed
        self._delivered = np.zeros(len(self.domains), np.int64)  # cumulative tokens given

    def _check_budget(self) -> None:
        total = self.num_steps * self.batch_tokens
        subset = f" in its train_subset={self.train_subset:g}" if self.train_subset < 1 else ""
        for d, w, available in zip(self.domains, self.weights, self._available):
            need = w * total
            if need + 1 > self.max_epochs * available:  # +1: rounding may give one more
                raise MixjaxError(
                    f"`budget_tokens`: domain '{d}' needs {need:,.0f} tokens at weight {w:.4g} but has "
                    f"{available:,} training tokens{subset} x max_epochs={self.max_epochs:g}")

    @property
    def unique_tokens(self) -> dict[str, int]:
        """Training tokens each domain draws from (its subset's with `train_subset` < 1)."""
        return {d: int(n) for d, n in zip(self.domains, self._available)}

    @property
    def tokens_consumed(self) -> dict[str, int]:
        return {d: int(n) for d, n in zip(self.domains, self._delivered)}

    def set_weights(self, weights) -> None:
        """New weights from the next batch on."""
        self.weights = Mixture.of(weights, self.domains, where="set_weights").weights

    def next_batch(self) -> PackedBatch:
        if self.step >= self.num_steps:
            raise StopIteration
        target = self._target + self.weights * self.batch_tokens
        counts = allocate(target - self._delivered, self.weights, self.batch_tokens)
        over = self._delivered + counts > self.max_epochs * self._available
        if over.any():
            d = self.domains[int(np.argmax(over))]
            raise DomainExhaustedError(
                f"domain '{d}' is exhausted at step {self.step}: its data would be repeated more than "
                f"max_epochs={self.max_epochs:g} times; lower its weight or the budget, or raise `max_epochs`")
        pieces = []
        for stream, n in zip(self._streams, counts):
            if n:
                pieces.extend(stream.take(int(n)))
        self._target, self._delivered = target, self._delivered + counts
        self.step += 1
        return pack_stream(pieces, self.batch_size, self.seq_len, len(self.domains))

    def __iter__(self) -> Iterator[PackedBatch]:
        while self.step < self.num_steps:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """JSON-able state from which `load_state_dict` resumes at exactly the next batch."""
        return {"step": self.step, "weights": self.weights.tolist(),
                "target": self._target.tolist(), "delivered": self._delivered.tolist(),
                "streams": [s.state() for s in self._streams], "seed": self.seed,
                "domains": self.domains, "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "domains", "batch_size", "seq_len"):
            if state[key] != getattr(self, key):
                raise MixjaxError(f"sampler state does not match: {key} {state[key]!r} != {getattr(self, key)!r}")
        self.step = int(state["step"])
        self.weights = np.asarray(state["weights"], np.float64)
        self._target = np.asarray(state["target"], np.float64)
        self._delivered = np.asarray(state["delivered"], np.int64)
        for stream, s in zip(self._streams, state["streams"]):
            stream.load(s)


def validation_batches(data: PreparedData, domain: str, batch_size: int, seq_len: int) -> Iterator[PackedBatch]:
    """The whole held-out split of one domain, in stored order, packed whole-example per row."""
    source = data.split(domain, "validation")
    index = data.domains.index(domain)

    def pieces():
        for i in range(len(source)):
            record = source[i]
            for tokens, mask in cut(np.asarray(record["tokens"], np.int32),
                                    np.asarray(record["loss_mask"], bool), seq_len):
                yield tokens, mask, index

    return pack_rows(pieces(), batch_size, seq_len, len(data.domains))
