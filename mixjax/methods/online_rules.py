"""The update rules of the online methods, as pure functions (LMO notation: A_ij is how much
training on domain j lowers the loss of domain i; every method ends in an EG step on sum_i b_i A_ij).
"""

from __future__ import annotations

import numpy as np

from mixjax.methods.eg import eg_update


def smoothed_one_hot(k: int, factor: float) -> np.ndarray:
    """Row j: `factor` on domain j, the rest spread evenly over the other domains (Aioli's
    LearnParams interval mixtures; factor 1 is a plain one-hot)."""
    if k < 2:
        raise ValueError("needs at least 2 domains")
    mixtures = np.full((k, k), (1.0 - factor) / (k - 1))
    np.fill_diagonal(mixtures, factor)
    return mixtures


def solve_interaction_matrix(loss_drops: np.ndarray, mixtures: np.ndarray, diagonal: bool = False) -> np.ndarray:
    """A from beta = A P^T, beta_ij the loss drop of domain i over an interval at mixture P_j.

    With `diagonal`, only A_ii = beta_ii / P_ii is kept (DoReMi-style diagonal law).
    """
    if diagonal:
        return np.diag(np.diag(loss_drops) / np.diag(mixtures))
    return np.linalg.solve(mixtures, loss_drops.T).T


def normalise_interactions(a: np.ndarray) -> np.ndarray:
    """Shift A so its smallest entry is 0 (if negative) and scale it to sum to 1."""
    a = np.asarray(a, np.float64)
    if a.min() < 0:
        a = a - a.min()
    total = a.sum()
    return a / total if total > 0 else np.full_like(a, 1.0 / a.size)


def aioli_update(weights: np.ndarray, a: np.ndarray, eta: float) -> np.ndarray:
    """Aioli's EG step: the benefit of domain j is the column sum of A (b_i = 1)."""
    return eg_update(weights, np.asarray(a).sum(axis=0), eta)


def skillit_weights(a: np.ndarray, val_loss: np.ndarray, eta: float) -> np.ndarray:
    """Skill-It: p_j proportional to exp(eta * sum_i A_ij L_i), the skills graph scaled by the
    current (window-summed) validation losses."""
    k = len(val_loss)
    return eg_update(np.full(k, 1.0 / k), np.asarray(a).T @ np.asarray(val_loss), eta)


def skillit_graph(loss_before: np.ndarray, loss_after_single: np.ndarray) -> np.ndarray:
    """A_ij = relative drop of loss i after training only on j (row j of `loss_after_single`
    holds the losses after the run on domain j alone)."""
    before = np.asarray(loss_before, np.float64)
    return (before[:, None] - np.asarray(loss_after_single, np.float64).T) / before[:, None]


def doremi_update(weights: np.ndarray, proxy_loss: np.ndarray, reference_loss: np.ndarray,
                  eta: float, smoothing: float = 1e-3) -> np.ndarray:
    """DoReMi: EG on the clipped excess loss of the proxy over the reference (diagonal A),
    smoothed towards uniform."""
    excess = np.maximum(np.asarray(proxy_loss) - np.asarray(reference_loss), 0.0)
    return eg_update(weights, excess, eta, smoothing)


def doge_update(weights: np.ndarray, alignment: np.ndarray, eta: float) -> np.ndarray:
    """DoGE: A_ij = <grad of validation loss i, grad of training loss j>; EG on its column sums."""
    return eg_update(weights, np.asarray(alignment).sum(axis=0), eta)


def doge_scaled_alignment(alignment: np.ndarray, train_grad_norm: np.ndarray, lr: float,
                          steps: int = 1) -> np.ndarray:
    """DoGE's scale for A (as its released code): lr x A / the mean training-gradient norm, i.e.
    the first-order drop of each validation loss from a step of size lr on each domain with the
    gradients' overall size divided out; times `steps` when one update stands for that many steps."""
    return np.asarray(alignment, np.float64) * (lr * steps / (float(np.mean(train_grad_norm)) + 1e-6))
