"""Drawing the next batch while the device runs this step, exactly as if drawn after the callbacks.

The sampler packs the next batch on the host while the step runs. A callback that then changes
the weights voids it: the sampler is rewound and the batch drawn again at the new weights, so the
batches are exactly those of drawing after the callbacks. After a step that changed the weights
the next is not drawn ahead (methods that change them every step gain nothing from it).
"""

from __future__ import annotations

import numpy as np

from mixjax.data.sampler import DomainExhaustedError


class DrawAhead:
    """Batches from `sampler`, the next one drawn early when the sampler can be rewound."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.enabled = hasattr(sampler, "state_dict") and hasattr(sampler, "load_state_dict")
        self.reweighted = False
        self._ahead = None  # the batch drawn early, if any
        self._before = None  # the sampler's state before it was drawn
        self._drawn_with = None  # the weights it was drawn at

    def take(self):
        """This step's batch: the one drawn ahead, else a new one."""
        batch, self._ahead = self._ahead, None
        return batch if batch is not None else self.sampler.next_batch()

    def draw_next(self, more_steps: bool) -> None:
        """Draw the next batch now (while the step runs), unless the last step changed the weights."""
        self._drawn_with = np.array(self.sampler.weights)
        if not (self.enabled and not self.reweighted and more_steps):
            return
        self._before = self.sampler.state_dict()
        try:
            self._ahead = self.sampler.next_batch()
        except DomainExhaustedError:  # at the old weights: drawn again (or raised) after the callbacks
            self.sampler.load_state_dict(self._before)
            self._ahead = None

    def after_callbacks(self) -> None:
        """Void the batch drawn ahead if the callbacks changed the weights."""
        weights = np.asarray(self.sampler.weights)
        self.reweighted = not np.array_equal(weights, self._drawn_with)
        if self._ahead is not None and self.reweighted:
            self.sampler.load_state_dict(self._before)
            self.sampler.set_weights(weights)
            self._ahead = None

    def sampler_state(self) -> dict:
        """The sampler's state as if nothing had been drawn ahead (what a checkpoint records)."""
        return self.sampler.state_dict() if self._ahead is None else self._before
