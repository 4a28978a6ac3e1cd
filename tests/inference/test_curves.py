"""inference/curves.py against scikit-learn and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_auc_score

from inference import curves, metrics


def _case(seed: int, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    return y, (np.round(s, 1) if ties else s)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_auc_ap_brier_and_pr_curve_match_sklearn(seed, ties):
    y, s = _case(seed, ties=ties)
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert curves.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert metrics.brier(y, s) == pytest.approx(brier_score_loss(y, s), abs=1e-12)
    precision, recall, thr = curves.precision_recall_curve(y, s)
    p_sk, r_sk, t_sk = precision_recall_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(precision, p_sk[::-1], atol=1e-12)
    np.testing.assert_allclose(recall, r_sk[::-1], atol=1e-12)
    np.testing.assert_allclose(thr, t_sk[::-1], atol=1e-12)


@pytest.mark.parametrize("n_bins", [5, 10])
def test_calibration_bins_match_sklearn_and_ece_by_hand(n_bins):
    y, s = _case(3)
    got = curves.calibration_bins(y, s, n_bins)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(got["prob_true"], prob_true, atol=1e-12)
    np.testing.assert_allclose(got["prob_pred"], prob_pred, atol=1e-12)
    # ECE by hand: two bins, perfectly calibrated in one, off by 0.5 in the other (half the cases each)
    hand = curves.calibration_bins([0, 1, 0, 0], [0.5, 0.5, 0.05, 0.05], n_bins=10)
    assert hand["ece"] == pytest.approx(0.5 * 0 + 0.5 * 0.05)
    assert sum(got["counts"]) == y.size


def test_bootstrap_curves_bracket_the_point_estimates_and_are_reproducible():
    y, s = _case(4)
    a = curves.bootstrap_curves(y, s, n_boot=200, seed=7)
    b = curves.bootstrap_curves(y, s, n_boot=200, seed=7)
    assert a == b
    assert a["auc_ci95"][0] < a["auc"] < a["auc_ci95"][1]
    assert a["ap_ci95"][0] < a["ap"] < a["ap_ci95"][1]
    lo, hi = np.asarray(a["roc_band"]["lo"]), np.asarray(a["roc_band"]["hi"])
    assert (lo <= hi).all() and lo[50] < hi[50]
    assert a["resamples"] == 200 and a["auc"] == pytest.approx(roc_auc_score(y, s))


def test_curves_without_positives_say_why_instead_of_a_number():
    assert curves.undefined_reason([0, 0, 0]) == "no positive cases among 3"
    assert curves.undefined_reason([1, 1]) == "no negative cases among 2"
    assert curves.undefined_reason([]) == "no cases with a label for this finding"
    with pytest.raises(ValueError, match="no positive cases among 3"):
        curves.bootstrap_curves([0, 0, 0], [0.1, 0.5, 0.9])


def test_confusion_counts_and_rates_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.6]
    c = curves.confusion(y, s, 0.6)
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (2, 1, 2, 2)
    assert c["sensitivity"] == pytest.approx(2 / 3) and c["specificity"] == pytest.approx(0.5)
    assert c["ppv"] == pytest.approx(0.5) and c["npv"] == pytest.approx(2 / 3)
    assert curves.confusion([0, 0], [0.1, 0.2], 0.5)["sensitivity"] is None


# scores of 4 positives and 6 negatives, by hand: positives 0.9 0.8 0.4 0.35, negatives 0.7 0.5 0.3 0.2 0.1 0.05
Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
S = [0.9, 0.8, 0.4, 0.35, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05]


@pytest.mark.parametrize(
    "rule,target,expected",
    [
        ("target_sensitivity", 0.5, 0.8),  # 2 of 4 at 0.8, specificity 6/6
        ("target_sensitivity", 0.75, 0.4),  # 3 of 4 first at 0.4 (0.7 and 0.5 called too)
        ("target_sensitivity", 1.0, 0.35),
        ("target_specificity", 1.0, 0.8),  # lowest threshold with no negative called
        ("target_specificity", 5 / 6, 0.7),  # one false positive allowed
        ("youden", None, 0.35),  # J(0.35) = 1 - 2/6 = 0.667 beats J(0.8) = 0.5
        ("max_f1", None, 0.35),  # F1 at 0.35: 8/(8+2) = 0.8; at 0.8: 4/6
    ],
)
def test_threshold_rules_on_a_hand_made_case(rule, target, expected):
    assert curves.choose_threshold(Y, S, rule, target) == pytest.approx(expected)


def test_a_specificity_only_calling_nothing_meets_lies_above_every_score():
    t = curves.choose_threshold([1, 0], [0.2, 0.9], "target_specificity", 1.0)
    assert t > 0.9 and curves.confusion([1, 0], [0.2, 0.9], t)["fp"] == 0


def test_rules_refuse_a_missing_target_and_a_finding_without_positives():
    with pytest.raises(ValueError, match="needs a target"):
        curves.choose_threshold(Y, S, "target_sensitivity")
    with pytest.raises(ValueError, match="no positive cases"):
        curves.choose_threshold([0, 0], [0.1, 0.2], "youden")


def test_the_bootstrap_areas_are_those_of_each_resample():
    # the bootstrap's one-sort shortcut against the plain functions on the same resamples (same seed)
    y, s = _case(5, n=60, ties=True)
    got = curves.bootstrap_curves(y, s, n_boot=50, seed=3)
    rng = np.random.default_rng(3)
    aucs, aps = [], []
    for _ in range(50):
        idx = rng.integers(0, y.size, y.size)
        if y[idx].all() or not y[idx].any():
            continue
        aucs.append(roc_auc_score(y[idx], s[idx]))
        aps.append(average_precision_score(y[idx], s[idx]))
    np.testing.assert_allclose(got["auc_ci95"], np.quantile(aucs, [0.025, 0.975]), atol=1e-12)
    np.testing.assert_allclose(got["ap_ci95"], np.quantile(aps, [0.025, 0.975]), atol=1e-12)


def test_a_target_specificity_only_calling_nothing_meets_stays_within_0_and_1():
    y = np.array([1, 0, 0, 1], bool)
    # the top score is a negative: only "call nothing" reaches specificity 1
    assert curves.choose_threshold(y, np.array([0.6, 0.9, 0.1, 0.4]), "target_specificity", 1.0) > 0.9
    with pytest.raises(ValueError, match="cannot reach the target: no threshold calls nothing positive"):
        curves.choose_threshold(y, np.array([0.6, 1.0, 0.1, 0.4]), "target_specificity", 1.0)
