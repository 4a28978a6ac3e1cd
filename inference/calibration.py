"""Platt scaling of multi-label classifier logits (pure numpy): p_k = sigmoid(slope * logit_k + intercept_k).

Why: fine-tuned with positive weights from a softmax start, the classifier ranks images well but its raw
sigmoids are not probabilities (Youden points of 1e-7 for Edema), so "0.00%" read as positive. One slope is
shared by all findings, because a validation split of ~130 images has only a handful of positives per finding;
each finding gets its own intercept. Targets are smoothed as in Platt (1999) so that a finding with no
validation positive still gets a finite fit. The map is monotone per finding: AUCs do not change.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def fit_platt(logits: np.ndarray, targets: np.ndarray, iterations: int = 100) -> tuple[float, np.ndarray]:
    """(slope, intercepts[K]) maximising the likelihood of `targets` (N x K, 0/1) given `logits` (N x K).

    Newton's method on the K + 1 parameters (the problem is convex), halving steps that do not lower the loss.
    """
    x = np.asarray(logits, np.float64)
    y = np.asarray(targets, np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"logits {x.shape} and targets {y.shape} must be the same N x K, N >= 2")
    n_pos, n_neg = y.sum(0), (1 - y).sum(0)
    t = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))  # Platt's smoothed targets
    k = x.shape[1]

    def loss(a: float, c: np.ndarray) -> float:
        z = a * x + c
        return float(np.sum(np.logaddexp(0, z) - t * z))

    a, c = 1.0, np.zeros(k)
    current = loss(a, c)
    for _ in range(iterations):
        p = sigmoid(a * x + c)
        r, w = p - t, p * (1 - p)
        grad = np.concatenate([[np.sum(r * x)], r.sum(0)])
        hess = np.zeros((k + 1, k + 1))
        hess[0, 0] = np.sum(w * x * x)
        hess[0, 1:] = hess[1:, 0] = (w * x).sum(0)
        hess[1:, 1:] = np.diag(w.sum(0))
        step = np.linalg.solve(hess + 1e-9 * np.eye(k + 1), grad)
        scale = 1.0
        while scale > 1e-6:
            a_new, c_new = a - scale * step[0], c - scale * step[1:]
            new = loss(a_new, c_new)
            if new <= current:
                break
            scale /= 2
        else:
            break
        done = current - new < 1e-10 * max(1.0, abs(current))
        a, c, current = a_new, c_new, new
        if done:
            break
    return float(a), c


def fit_platt_per_label(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slopes[K], intercepts[K]): an independent Platt fit per finding, for when there are enough held-out
    predictions per finding (e.g. out of fold over all images) to give each its own slope."""
    x, y = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"logits {x.shape} and targets {y.shape} must be the same N x K")
    fits = [fit_platt(x[:, [k]], y[:, [k]]) for k in range(x.shape[1])]
    return np.array([a for a, _ in fits]), np.array([c[0] for _, c in fits])


def apply_platt(logits: np.ndarray, slope: float | np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Calibrated probabilities, same shape as `logits` (N x K); `slope`: one for all findings or one each."""
    return sigmoid(
        np.asarray(slope, np.float64) * np.asarray(logits, np.float64) + np.asarray(intercepts, np.float64)
    ).astype(np.float32)
