"""The exponentiated-gradient step every online method of the LMO framework takes:
p_j <- p_j exp(eta * g_j) / Z, with g_j = sum_i b_i A_ij the benefit of training on domain j."""

from __future__ import annotations

import numpy as np


def eg_update(weights: np.ndarray, signal: np.ndarray, eta: float, smoothing: float = 0.0) -> np.ndarray:
    """One EG step on the simplex, optionally mixed with `smoothing` of the uniform distribution.

    Computed in log space (shifted by the max) so large eta * signal cannot overflow.
    """
    weights, signal = np.asarray(weights, np.float64), np.asarray(signal, np.float64)
    logits = np.log(np.maximum(weights, 1e-300)) + eta * signal
    new = np.exp(logits - logits.max())
    new /= new.sum()
    if smoothing:
        new = (1.0 - smoothing) * new + smoothing / len(new)
    return new
