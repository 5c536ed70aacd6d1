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
    validation losses summed over the last evaluations (L = 1 gives the release's first weights)."""
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


def doge_scores(alignment: np.ndarray, train_grad_norm: np.ndarray, val_gram: np.ndarray, lr: float,
                max_norm: float = 1.0, score_max: float = 5.0) -> np.ndarray:
    """DoGE's per-domain score, as its released code computes it from one gradient of the mixed
    validation batch: every gradient clipped to norm `max_norm` (clip_grad_norm_), then
    lr x <clipped g_val, clipped g_train_j> / (mean clipped training-gradient norm), clipped to
    [0, score_max x lr].

    From the per-domain quantities the trainer measures: the mixed validation gradient is the mean of
    the K validation gradients, so <g_val, g_train_j> is the column mean of `alignment`
    (A_ij = <g_val_i, g_train_j>) and |g_val| = sqrt(sum of their Gram matrix) / K."""
    a = np.asarray(alignment, np.float64)
    k = a.shape[0]
    norms = np.asarray(train_grad_norm, np.float64)
    val_norm = np.sqrt(max(float(np.sum(val_gram)), 0.0)) / k

    def clip(norm):  # torch's clip_grad_norm_ factor
        return np.minimum(1.0, max_norm / (norm + 1e-6))

    dots = a.mean(axis=0) * clip(val_norm) * clip(norms)
    scores = lr * dots / (float(np.mean(norms * clip(norms))) + 1e-6)
    return np.clip(scores, 0.0, score_max * lr)


def doge_update(weights: np.ndarray, scores: np.ndarray, eta: float) -> np.ndarray:
    """DoGE's step: log w += scores / mu (eta = 1 / mu), then softmax."""
    return eg_update(weights, scores, eta)
