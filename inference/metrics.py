"""Evaluation metrics in plain numpy (checked against scikit-learn and hand-made cases in
tests/inference/test_metrics.py): Dice, ROC / AUC with bootstrap intervals, Youden points, Brier score,
sensitivity / specificity at a threshold, MAE, SSIM."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(pred: np.ndarray, target: np.ndarray, label: int) -> float:
    """2|P∩T| / (|P|+|T|) for one label of two label maps; 1.0 when the label is absent from both."""
    p, t = np.asarray(pred) == label, np.asarray(target) == label
    if p.shape != t.shape:
        raise ValueError(f"label maps differ in shape: {p.shape} vs {t.shape}")
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def dice_per_class(pred: np.ndarray, target: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    return {name: dice(pred, target, i) for i, name in labels.items()}


def _binary(y_true: Sequence, y_score: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def roc_curve(y_true: Sequence, y_score: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, highest threshold first, starting at (0, 0) with
    threshold +inf: sklearn.metrics.roc_curve(..., drop_intermediate=False)."""
    y, s = _binary(y_true, y_score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs at least one positive and one negative case")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # a threshold counts all tied scores
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def roc_auc(y_true: Sequence, y_score: Sequence) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative) + ½ P(tie) (Mann-Whitney)."""
    y, s = _binary(y_true, y_score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative case")
    ranks = _midranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _midranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1..ends
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def bootstrap_auc_ci(
    y_true: Sequence, y_score: Sequence, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (cases resampled with replacement; resamples lacking a positive or a
    negative are skipped). With a fixed seed the interval is reproducible."""
    y, s = _binary(y_true, y_score)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        yb = y[idx]
        if yb.all() or not yb.any():
            continue
        aucs.append(roc_auc(yb, s[idx]))
    if not aucs:
        return float("nan"), float("nan")
    lo, hi = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean (cases resampled with replacement), e.g. of per-image Dice: with
    a few dozen validation images the mean moves by several thousandths between samples of them."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(_resampled_means(v, n_boot, seed), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _resampled_means(v: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of `n_boot` resamples of `v` with replacement (fixed seed: reproducible)."""
    return v[np.random.default_rng(seed).integers(0, v.size, (n_boot, v.size))].mean(axis=1)


def paired_bootstrap_mean_diff(
    values_a: Sequence[float], values_b: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> dict:
    """Mean of A minus mean of B over the same cases (e.g. two models' Dice per image), with a 95% percentile
    interval from resampling cases (the pairing kept) and the share of resamples where A is ahead."""
    a, b = np.asarray(values_a, np.float64).ravel(), np.asarray(values_b, np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"needs the same, non-zero number of cases: {a.size} and {b.size}")
    d = a - b
    means = _resampled_means(d, n_boot, seed)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"a": float(a.mean()), "b": float(b.mean()), "difference": float(d.mean()),
            "ci95": [float(lo), float(hi)], "share_of_resamples_a_ahead": float(np.mean(means > 0)),
            "n": int(d.size)}  # fmt: skip


def paired_bootstrap_mean_auc_diff(
    y_true: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> dict:
    """Mean AUC of A minus that of B on the same images (N x K arrays), with a 95% percentile interval from
    resampling images (the pairing kept) and the share of resamples where A is ahead.

    With `strata` (one label per image, e.g. the cross-validation fold), AUCs are computed within each stratum
    and images are resampled within it: scores from different fold models are never ranked against each
    other. The mean runs over (stratum, finding) pairs that have a positive and a negative."""
    y = np.asarray(y_true, bool)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if not (y.shape == a.shape == b.shape and y.ndim == 2):
        raise ValueError(f"shapes differ: {y.shape}, {a.shape}, {b.shape}")
    groups = np.zeros(y.shape[0], int) if strata is None else np.asarray(strata)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]

    def aucs(parts: list[np.ndarray]) -> tuple[list[float], list[float]]:
        ra, rb = [], []
        for idx in parts:
            for k in range(y.shape[1]):
                yk = y[idx, k]
                if yk.any() and not yk.all():
                    ra.append(roc_auc(yk, a[idx, k]))
                    rb.append(roc_auc(yk, b[idx, k]))
        return ra, rb

    full_a, full_b = aucs(members)
    if not full_a:  # no finding has both a positive and a negative (in any stratum): nothing to compare
        return {"a": None, "b": None, "difference": None, "ci95": None, "share_of_resamples_a_ahead": None,
                "n_aucs": 0, "note": "needs positives and negatives"}  # fmt: skip
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        ra, rb = aucs([m[rng.integers(0, m.size, m.size)] for m in members])
        if ra:
            boots.append(float(np.mean(ra) - np.mean(rb)))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {
        "a": float(np.mean(full_a)),
        "b": float(np.mean(full_b)),
        "difference": float(np.mean(full_a) - np.mean(full_b)),
        "ci95": [float(lo), float(hi)],
        "share_of_resamples_a_ahead": float(np.mean(np.asarray(boots) > 0)),
        "n_aucs": len(full_a),
        "resamples": len(boots),
    }


def bootstrap_mean_auc_ci(
    y_true: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean AUC over findings (N x K arrays; a finding counts in a resample while
    it has a positive and a negative there), images resampled with replacement."""
    y, s = np.asarray(y_true, bool), np.asarray(scores, np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.shape[0], y.shape[0])
        aucs = [roc_auc(y[idx, k], s[idx, k]) for k in range(y.shape[1]) if y[idx, k].any() and not y[idx, k].all()]
        if aucs:
            means.append(float(np.mean(aucs)))
    if not means:
        return float("nan"), float("nan")
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def youden_threshold(y_true: Sequence, y_score: Sequence) -> tuple[float, float]:
    """(threshold, J): the score threshold (predict positive when score >= threshold) maximising Youden's
    J = sensitivity + specificity - 1; the first (highest) threshold wins ties."""
    fpr, tpr, thr = roc_curve(y_true, y_score)
    j = tpr - fpr
    i = int(np.argmax(j[1:])) + 1  # skip the +inf point
    return float(thr[i]), float(j[i])


def threshold_at_sensitivity(y_true: Sequence, y_score: Sequence, sensitivity: float = 0.9) -> float:
    """The highest threshold t (positive when score >= t) whose sensitivity is at least `sensitivity`: the
    score of the ceil(sensitivity * n_pos)-th highest-scored positive. Ties with negatives are called
    positive too, so specificity is whatever that point gives."""
    y, s = _binary(y_true, y_score)
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        raise ValueError("a sensitivity threshold needs at least one positive")
    if not 0 < sensitivity <= 1:
        raise ValueError(f"sensitivity must be in (0, 1], not {sensitivity}")
    need = int(np.ceil(sensitivity * pos.size - 1e-9))
    return float(pos[max(need, 1) - 1])


def brier(y_true: Sequence, y_prob: Sequence) -> float:
    """Mean squared difference between predicted probability and outcome (0 is perfect; 0.25 is a coin)."""
    y, p = _binary(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def operating_point(y_true: Sequence, y_score: Sequence, threshold: float) -> dict:
    """Sensitivity and specificity when score >= threshold is called positive (None where undefined)."""
    y, s = _binary(y_true, y_score)
    called = s >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return {
        "threshold": float(threshold),
        "sensitivity": float((called & y).sum() / n_pos) if n_pos else None,
        "specificity": float((~called & ~y).sum() / n_neg) if n_neg else None,
    }


def auc_report(
    y_true: Sequence, y_score: Sequence, n_boot: int = 1000, seed: int = 0, roc_points: int = 101
) -> dict:
    """AUC, 95% bootstrap interval, counts and ROC points (at most `roc_points`, end points kept)."""
    y, s = _binary(y_true, y_score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out: dict = {"n_pos": n_pos, "n_neg": n_neg}
    if n_pos == 0 or n_neg == 0:
        return out | {"auc": None, "ci95": None, "roc": None, "note": "needs positives and negatives"}
    fpr, tpr, _ = roc_curve(y, s)
    if fpr.size > roc_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, roc_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    lo, hi = bootstrap_auc_ci(y, s, n_boot=n_boot, seed=seed)
    return out | {
        "auc": roc_auc(y, s),
        "ci95": [lo, hi],
        "roc": {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]},
    }


def mae(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).mean())


def _gaussian_filter(img: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian blur with reflect padding (scipy.ndimage.gaussian_filter, mode='reflect')."""
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        p = np.pad(out, pad, mode="symmetric")
        out = sum(k[i] * np.take(p, np.arange(i, i + img.shape[axis]), axis=axis) for i in range(k.size))
    return out


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004) with the paper's settings: 11x11 Gaussian window,
    sigma 1.5, K1 0.01, K2 0.03, sample covariances (as skimage's structural_similarity(...,
    gaussian_weights=True, use_sample_covariance=False, data_range=...)), averaged away from the border."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two 2D images of one shape, got {a.shape} and {b.shape}")
    sigma, radius = 1.5, 5  # truncate=3.5 -> radius int(3.5*1.5+0.5)=5, an 11x11 window
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _gaussian_filter(a, sigma, radius), _gaussian_filter(b, sigma, radius)
    var_a = _gaussian_filter(a * a, sigma, radius) - mu_a**2
    var_b = _gaussian_filter(b * b, sigma, radius) - mu_b**2
    cov = _gaussian_filter(a * b, sigma, radius) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s[radius:-radius, radius:-radius].mean())
