"""Platt scaling of classifier logits (inference/calibration.py) and its use by the runner."""

import numpy as np
import pytest

from inference import metrics
from inference.calibration import apply_platt, fit_platt


def _synthetic(n=20000, slope=0.5, intercepts=(-1.0, 0.5, 2.0), seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, len(intercepts)))
    p = 1 / (1 + np.exp(-(slope * logits + np.array(intercepts))))
    return logits, (rng.random(p.shape) < p).astype(np.float32)


def test_recovers_the_slope_and_intercepts_that_generated_the_labels():
    logits, targets = _synthetic()
    slope, intercepts = fit_platt(logits, targets)
    assert slope == pytest.approx(0.5, abs=0.02)
    assert intercepts == pytest.approx([-1.0, 0.5, 2.0], abs=0.06)


def test_matches_an_unregularised_logistic_regression_for_one_finding():
    from sklearn.linear_model import LogisticRegression

    logits, targets = _synthetic(n=5000, intercepts=(0.7,), seed=1)
    slope, intercepts = fit_platt(logits, targets)
    ref = LogisticRegression(C=1e6).fit(logits, targets[:, 0])
    # Platt's smoothed targets move the optimum by O(1/N) only
    assert slope == pytest.approx(ref.coef_[0, 0], abs=0.01)
    assert intercepts[0] == pytest.approx(ref.intercept_[0], abs=0.02)


def test_calibrated_scores_rank_as_the_logits_and_match_the_observed_rate():
    rng = np.random.default_rng(2)
    logits = rng.normal(-12, 4, (300, 2))  # raw scores far from probabilities, like the fine-tuned model's
    targets = (rng.random((300, 2)) < 1 / (1 + np.exp(-(logits + 12) / 2))).astype(np.float32)
    slope, intercepts = fit_platt(logits, targets)
    probs = apply_platt(logits, slope, intercepts)
    for k in range(2):
        assert metrics.roc_auc(targets[:, k], probs[:, k]) == pytest.approx(
            metrics.roc_auc(targets[:, k], logits[:, k])
        )
        assert probs[:, k].mean() == pytest.approx(targets[:, k].mean(), abs=0.01)
    assert 0.2 < probs.mean() < 0.8  # the raw sigmoids were all about 1e-5


def test_a_finding_without_positives_still_gets_a_finite_low_probability():
    logits, targets = _synthetic(n=400, intercepts=(0.0, 0.0), seed=3)
    targets[:, 1] = 0
    slope, intercepts = fit_platt(logits, targets)
    probs = apply_platt(logits, slope, intercepts)
    assert np.isfinite(intercepts).all() and probs[:, 1].mean() < 0.01  # Platt target for negatives: 1/(N+2)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same N x K"):
        fit_platt(np.zeros((5, 2)), np.zeros((5, 3)))
