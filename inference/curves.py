"""Per-finding evaluation figures in plain numpy, beside inference/metrics.py (checked against scikit-learn and
hand-made cases in tests/inference/test_curves.py): precision-recall curve and average precision, bootstrap
bands of the ROC and PR curves, reliability bins and ECE, the confusion at a threshold, and the rules that
choose a threshold (target sensitivity, target specificity, Youden, maximum F1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.metrics import _binary, roc_auc, roc_curve, youden_threshold

GRID = np.linspace(0.0, 1.0, 101)  # where bands are read: false-positive rate for ROC, recall for PR
RULES = ("target_sensitivity", "target_specificity", "youden", "max_f1")


def undefined_reason(y_true: Sequence) -> str | None:
    """Why ROC / AUC / AP are not defined for these labels (no positives, or no negatives), else None."""
    y = np.asarray(y_true).astype(bool)
    if y.size == 0:
        return "no cases with a label for this finding"
    if not y.any():
        return f"no positive cases among {y.size}"
    if y.all():
        return f"no negative cases among {y.size}"
    return None


def precision_recall_curve(y_true: Sequence, y_score: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at every distinct score, highest threshold first and recall rising from
    (recall 0, precision 1): sklearn.metrics.precision_recall_curve reversed, with drop_intermediate=False."""
    y, s = _binary(y_true, y_score)
    if not y.any():
        raise ValueError("a precision-recall curve needs at least one positive case")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    called = last_of_tie + 1
    return np.r_[1.0, tps / called], np.r_[0.0, tps / y.sum()], s[last_of_tie]


def average_precision(y_true: Sequence, y_score: Sequence) -> float:
    """Σ (R_n - R_{n-1}) P_n over the thresholds (sklearn.metrics.average_precision_score: no interpolation)."""
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    return float(np.sum(np.diff(recall) * precision[1:]))


def _tpr_on_grid(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """The best sensitivity reached at each false-positive rate of GRID (the ROC as a step function)."""
    return tpr[np.searchsorted(fpr, GRID, side="right") - 1]


def _precision_on_grid(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """Interpolated precision (the best precision at this recall or above) at each recall of GRID."""
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    return best_after[np.minimum(np.searchsorted(recall, GRID, side="left"), recall.size - 1)]


def bootstrap_curves(
    y_true: Sequence, y_score: Sequence, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """AUC and AP with percentile bootstrap intervals, and pointwise bands of the ROC (sensitivity at each
    false-positive rate of GRID) and of the PR curve (interpolated precision at each recall of GRID), from
    `n_boot` resamples of the cases (those lacking a positive or a negative are skipped). Fixed seed:
    reproducible. Raises ValueError where the curves are not defined (see undefined_reason)."""
    y, s = _binary(y_true, y_score)
    if (reason := undefined_reason(y)) is not None:
        raise ValueError(reason)
    rng = np.random.default_rng(seed)
    aucs, aps, tprs, precs = [], [], [], []
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    rank = np.empty(y.size, dtype=np.intp)
    rank[order] = np.arange(y.size)  # a case's place in score order
    for _ in range(n_boot):
        # the resampled cases, taken in score order: one sort serves the ROC, the PR curve and both areas
        idx = np.sort(rank[rng.integers(0, y.size, y.size)])
        yb, sb = y_sorted[idx], s_sorted[idx]
        n_pos = int(yb.sum())
        if n_pos == 0 or n_pos == yb.size:
            continue
        last_of_tie = np.r_[np.flatnonzero(np.diff(sb)), yb.size - 1]
        tps = np.cumsum(yb)[last_of_tie]
        fps = last_of_tie + 1 - tps
        fpr, tpr = np.r_[0.0, fps / (yb.size - n_pos)], np.r_[0.0, tps / n_pos]
        precision, recall = np.r_[1.0, tps / (last_of_tie + 1)], tpr
        aucs.append(float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)))  # trapezoids: ties count half
        aps.append(float(np.sum(np.diff(recall) * precision[1:])))
        tprs.append(_tpr_on_grid(fpr, tpr))
        precs.append(_precision_on_grid(precision, recall))
    q = [alpha / 2, 1 - alpha / 2]

    def interval(v: list) -> list[float] | None:
        return [float(x) for x in np.quantile(v, q)] if v else None

    def band(rows: list) -> dict | None:
        if not rows:
            return None
        lo, hi = np.quantile(np.asarray(rows), q, axis=0)
        return {"lo": lo.tolist(), "hi": hi.tolist()}

    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    return {
        "auc": roc_auc(y, s), "auc_ci95": interval(aucs),
        "ap": average_precision(y, s), "ap_ci95": interval(aps),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, "roc_band": band(tprs),
        "pr": {"recall": recall.tolist(), "precision": precision.tolist()}, "pr_band": band(precs),
        "grid": GRID.tolist(), "resamples": len(aucs), "prevalence": float(y.mean()),
        "n_pos": int(y.sum()), "n_neg": int((~y).sum()),
    }  # fmt: skip


def calibration_bins(y_true: Sequence, y_prob: Sequence, n_bins: int = 10) -> dict:
    """Reliability diagram data on `n_bins` equal-width bins of [0, 1] (empty bins dropped), as
    sklearn.calibration.calibration_curve(strategy="uniform"): the observed rate (prob_true) and the mean
    predicted probability (prob_pred) per bin, with its count; ECE = Σ count/N |prob_true - prob_pred|."""
    y, p = _binary(y_true, y_prob)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("calibration needs probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    total = np.bincount(ids, minlength=n_bins)
    true = np.bincount(ids, weights=y.astype(float), minlength=n_bins)
    pred = np.bincount(ids, weights=p, minlength=n_bins)
    keep = total > 0
    prob_true, prob_pred, counts = true[keep] / total[keep], pred[keep] / total[keep], total[keep]
    ece = float(np.sum(counts / max(p.size, 1) * np.abs(prob_true - prob_pred)))
    return {"prob_true": prob_true.tolist(), "prob_pred": prob_pred.tolist(), "counts": counts.tolist(),
            "ece": ece, "n_bins": n_bins}  # fmt: skip


def confusion(y_true: Sequence, y_score: Sequence, threshold: float) -> dict:
    """Counts and rates when score >= threshold is called positive: sensitivity, specificity, PPV, NPV and F1
    (None where the denominator is 0)."""
    y, s = _binary(y_true, y_score)
    called = s >= threshold
    tp, fp = int((called & y).sum()), int((called & ~y).sum())
    fn, tn = int((~called & y).sum()), int((~called & ~y).sum())

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {"threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}  # fmt: skip


def choose_threshold(y_true: Sequence, y_score: Sequence, rule: str, target: float | None = None) -> float:
    """The threshold (call positive at score >= it) that `rule` picks among the distinct scores:
    target_sensitivity: the highest threshold whose sensitivity reaches `target` (so the best specificity);
    target_specificity: the lowest threshold whose specificity reaches `target` (so the best sensitivity);
    youden: the one maximising sensitivity + specificity - 1; max_f1: the one maximising F1. Ties go to the
    highest threshold. A target specificity only "call nothing" meets gives a threshold above every score, or
    ValueError where a score is 1 (the threshold would leave [0, 1])."""
    y, s = _binary(y_true, y_score)
    if (reason := undefined_reason(y)) is not None:
        raise ValueError(f"cannot choose a threshold: {reason}")
    if rule in ("target_sensitivity", "target_specificity") and not (target is not None and 0 < target <= 1):
        raise ValueError(f"{rule} needs a target between 0 and 1, got {target}")
    fpr, tpr, thr = roc_curve(y, s)
    if rule == "target_sensitivity":
        return float(thr[int(np.argmax(tpr >= target - 1e-12))])
    if rule == "target_specificity":
        i = int(np.flatnonzero(1 - fpr >= target - 1e-12)[-1])
        if i > 0:
            return float(thr[i])
        if s.max() >= 1.0:  # "call nothing" would need a threshold above 1, which no threshold set holds
            raise ValueError("cannot reach the target: no threshold calls nothing positive (a score is 1)")
        return float(np.nextafter(s.max(), np.inf))
    if rule == "youden":
        return youden_threshold(y, s)[0]
    if rule == "max_f1":
        tps, fps = tpr[1:] * y.sum(), fpr[1:] * (~y).sum()
        f1 = 2 * tps / (tps + fps + y.sum())
        return float(thr[1:][int(np.argmax(f1))])
    raise ValueError(f"unknown rule {rule!r}; one of {', '.join(RULES)}")
