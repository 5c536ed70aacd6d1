"""The packed batch the sampler yields and the trainer consumes."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """A [batch, seq] block of packed examples.

    tokens_BxL       int32 token ids.
    segment_ids_BxL  int32, > 0 for real tokens (one id per packed example piece within a row),
                     0 for padding. Tokens attend only to earlier tokens of the same segment.
    positions_BxL    int32 position of each token inside its segment (restarts at 0).
    loss_mask_BxL    bool, True where the token is a training target (assistant tokens for SFT).
    domain_ids_BxL   int32 index of the domain each token came from, -1 for padding.
    tokens_per_domain       int64 [K] tokens of each domain in this batch.
    loss_tokens_per_domain  int64 [K] loss-masked tokens of each domain in this batch.
    """

    tokens_BxL: np.ndarray
    segment_ids_BxL: np.ndarray
    positions_BxL: np.ndarray
    loss_mask_BxL: np.ndarray
    domain_ids_BxL: np.ndarray
    tokens_per_domain: np.ndarray
    loss_tokens_per_domain: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The [B, L] arrays, for passing to a jitted step."""
        return {
            "tokens": self.tokens_BxL,
            "segment_ids": self.segment_ids_BxL,
            "positions": self.positions_BxL,
            "loss_mask": self.loss_mask_BxL,
            "domain_ids": self.domain_ids_BxL,
        }


def next_token_targets(tokens_BxL, segment_ids_BxL, loss_mask_BxL, xp=np):
    """Targets and weights for next-token prediction on a packed batch.

    Position t predicts token t+1 when both belong to the same (non-padding) segment and token
    t+1 is loss-masked. Works with numpy or jax.numpy (pass `xp=jnp`) so the train step can call it.
    Returns (targets_BxL int32, weights_BxL float32); the last column has weight 0.
    """
    targets = xp.concatenate([tokens_BxL[:, 1:], xp.zeros_like(tokens_BxL[:, :1])], axis=1)
    next_seg = xp.concatenate([segment_ids_BxL[:, 1:], xp.zeros_like(segment_ids_BxL[:, :1])], axis=1)
    next_mask = xp.concatenate([loss_mask_BxL[:, 1:], xp.zeros_like(loss_mask_BxL[:, :1])], axis=1)
    same = (next_seg == segment_ids_BxL) & (segment_ids_BxL > 0)
    weights = (same & next_mask.astype(bool)).astype(xp.float32)
    return targets.astype(xp.int32), weights
