"""Metric functions against scikit-learn / scipy and against values worked out by hand."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from inference import metrics


def test_dice_by_hand():
    pred = np.array([[1, 1, 0], [2, 2, 0], [0, 0, 0]])
    truth = np.array([[1, 0, 0], [2, 2, 2], [0, 0, 3]])
    assert metrics.dice(pred, truth, 1) == pytest.approx(2 * 1 / (2 + 1))
    assert metrics.dice(pred, truth, 2) == pytest.approx(2 * 2 / (2 + 3))
    assert metrics.dice(pred, truth, 3) == 0.0  # missed entirely
    assert metrics.dice(pred, pred, 3) == 1.0  # absent from both
    assert metrics.dice_per_class(truth, truth, {1: "lungs", 2: "heart"}) == {"lungs": 1.0, "heart": 1.0}
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.dice(pred, truth[:2], 1)


def test_auc_by_hand():
    # 2 positives (0.9, 0.4), 2 negatives (0.5, 0.1): pairs won 3 of 4 -> 0.75; a tie counts a half.
    assert metrics.roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == 0.75
    assert metrics.roc_auc([1, 0], [0.3, 0.3]) == 0.5
    assert metrics.roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.roc_auc([1, 1], [0.2, 0.3])
    fpr, tpr, thr = metrics.roc_curve([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1])
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert thr[1:].tolist() == [0.9, 0.5, 0.4, 0.1]
    # Youden: at 0.4 sensitivity 1, specificity 0.5 -> J 0.5 (0.9 also gives 0.5: the higher threshold wins).
    assert metrics.youden_threshold([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == (0.9, 0.5)
    assert metrics.youden_threshold([1, 1, 0, 0], [0.9, 0.8, 0.5, 0.1]) == (0.8, 1.0)


def test_brier_and_operating_point_by_hand_and_against_sklearn():
    # (0.9-1)^2 + (0.4-1)^2 + (0.5-0)^2 + (0.1-0)^2 = 0.01 + 0.36 + 0.25 + 0.01 = 0.63 -> / 4
    assert metrics.brier([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.1575)
    # at 0.45: positives 0.9 called, 0.4 missed; negatives 0.5 called, 0.1 not
    assert metrics.operating_point([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], 0.45) == {
        "threshold": 0.45, "sensitivity": 0.5, "specificity": 0.5,
    }  # fmt: skip
    assert metrics.operating_point([0, 0], [0.2, 0.7], 0.5)["sensitivity"] is None
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.random(200)
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p))


@pytest.mark.parametrize("seed", range(5))
def test_roc_and_auc_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.4 * y, 1)  # rounding makes many ties
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, thr = metrics.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    j = sk_tpr - sk_fpr
    assert metrics.youden_threshold(y, s)[0] == sk_thr[int(np.argmax(j))]


def test_bootstrap_interval_brackets_the_auc_and_is_reproducible():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.5 * y
    auc = metrics.roc_auc(y, s)
    lo, hi = metrics.bootstrap_auc_ci(y, s, n_boot=500, seed=3)
    assert lo < auc < hi and 0.05 < hi - lo < 0.25
    assert metrics.bootstrap_auc_ci(y, s, n_boot=500, seed=3) == (lo, hi)
    # Independent re-implementation with sklearn on the same resamples.
    r = np.random.default_rng(3)
    ref = []
    for _ in range(500):
        idx = r.integers(0, 200, 200)
        if 0 < y[idx].sum() < 200:
            ref.append(roc_auc_score(y[idx], s[idx]))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ref, [0.025, 0.975])))
    report = metrics.auc_report(y, s, n_boot=200, roc_points=11)
    assert report["n_pos"] + report["n_neg"] == 200 and len(report["roc"]["fpr"]) <= 11
    assert report["roc"]["fpr"][0] == 0 and report["roc"]["tpr"][-1] == 1
    assert metrics.auc_report([0, 0], [0.1, 0.2])["auc"] is None


def test_bootstrap_interval_of_a_mean_matches_scipy_and_the_normal_approximation():
    from scipy import stats

    v = np.random.default_rng(1).normal(0.95, 0.02, 400)
    lo, hi = metrics.bootstrap_mean_ci(v, n_boot=4000, seed=2)
    assert lo < v.mean() < hi and metrics.bootstrap_mean_ci(v, n_boot=4000, seed=2) == (lo, hi)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)  # about 0.002 here
    assert (lo, hi) == pytest.approx((v.mean() - half, v.mean() + half), abs=half * 0.1)
    ref = stats.bootstrap((v,), np.mean, n_resamples=4000, method="percentile", random_state=5)
    ref_ci = ref.confidence_interval
    assert (lo, hi) == pytest.approx((ref_ci.low, ref_ci.high), abs=half * 0.1)
    assert metrics.bootstrap_mean_ci([0.9] * 5) == pytest.approx((0.9, 0.9))  # no spread, no interval
    assert all(np.isnan(metrics.bootstrap_mean_ci([])))


def test_paired_difference_of_means_resamples_cases_together():
    rng = np.random.default_rng(4)
    b = rng.normal(0.94, 0.03, 39)  # e.g. one model's Dice on 39 images
    shifted = metrics.paired_bootstrap_mean_diff(b + 0.01, b, n_boot=200)
    # A constant per-case gain: every resample sees exactly it, though B alone varies a lot between resamples.
    assert shifted["difference"] == pytest.approx(0.01) and shifted["ci95"] == pytest.approx([0.01, 0.01])
    assert shifted["share_of_resamples_a_ahead"] == 1 and shifted["n"] == 39
    a = b + rng.normal(0.002, 0.01, 39)
    d = metrics.paired_bootstrap_mean_diff(a, b, n_boot=500, seed=7)
    r = np.random.default_rng(7)  # the same resamples by hand
    means = [(a - b)[r.integers(0, 39, 39)].mean() for _ in range(500)]
    assert d["ci95"] == pytest.approx(list(np.quantile(means, [0.025, 0.975])))
    assert d["share_of_resamples_a_ahead"] == pytest.approx(np.mean(np.array(means) > 0))
    with pytest.raises(ValueError, match="same, non-zero number"):
        metrics.paired_bootstrap_mean_diff(a, b[:-1])


def test_mae_and_ssim():
    a = np.zeros((32, 32))
    assert metrics.mae(a, a + 0.25) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    img = gaussian_filter(rng.random((64, 64)), 2)
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    # Constant images c1, c2: variances and covariance vanish, SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1).
    C1 = 0.01**2
    assert metrics.ssim(np.full((32, 32), 0.2), np.full((32, 32), 0.6)) == pytest.approx(
        (2 * 0.2 * 0.6 + C1) / (0.04 + 0.36 + C1)
    )
    # Against a direct scipy re-implementation of Wang et al. (Gaussian sigma 1.5, 11x11 window).
    noisy = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
    f = lambda x: gaussian_filter(x, 1.5, truncate=3.5)  # noqa: E731
    ma, mb = f(img), f(noisy)
    va, vb, cov = f(img * img) - ma**2, f(noisy * noisy) - mb**2, f(img * noisy) - ma * mb
    C2 = 0.03**2
    smap = ((2 * ma * mb + C1) * (2 * cov + C2)) / ((ma**2 + mb**2 + C1) * (va + vb + C2))
    assert metrics.ssim(img, noisy) == pytest.approx(smap[5:-5, 5:-5].mean())
    assert metrics.ssim(img, noisy) < metrics.ssim(img, (img + noisy) / 2) < 1


def test_paired_bootstrap_difference_of_mean_auc():
    rng = np.random.default_rng(0)
    y = rng.random((300, 3)) < 0.3
    good = y + rng.normal(0, 0.5, y.shape)  # informative scores
    noise = rng.random(y.shape)
    same = metrics.paired_bootstrap_mean_auc_diff(y, good, good, n_boot=50)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["n_aucs"] == 3
    ahead = metrics.paired_bootstrap_mean_auc_diff(y, good, noise, n_boot=200)
    expected = np.mean(
        [metrics.roc_auc(y[:, k], good[:, k]) - metrics.roc_auc(y[:, k], noise[:, k]) for k in range(3)]
    )
    assert ahead["difference"] == pytest.approx(expected)
    assert 0 < ahead["ci95"][0] < ahead["difference"] < ahead["ci95"][1]
    assert ahead["share_of_resamples_a_ahead"] == 1
    behind = metrics.paired_bootstrap_mean_auc_diff(y, noise, good, n_boot=200)
    assert behind["difference"] == pytest.approx(-expected) and behind["ci95"][1] < 0
    y2 = y.copy()
    y2[:, 2] = False  # a finding without positives is left out
    assert metrics.paired_bootstrap_mean_auc_diff(y2, good, noise, n_boot=20)["n_aucs"] == 2
    # nothing scorable (no finding has both classes): a clear empty answer, not an IndexError
    empty = metrics.paired_bootstrap_mean_auc_diff(np.zeros_like(y), good, noise, n_boot=20)
    assert empty["n_aucs"] == 0 and empty["difference"] is None and empty["ci95"] is None


def test_strata_keep_fold_models_apart():
    """Two folds scored by models on different scales: pooled, the ranking across folds is nonsense; within
    folds each model is perfect, so A (per-fold perfect) must not look worse than B (one model, perfect)."""
    y = np.tile([True, False], 50)[:, None]
    fold = np.repeat([0, 1], 50)
    b = y.astype(float)  # one model, perfect
    a = b - np.where(fold == 1, 10.0, 0.0)[:, None]  # perfect within each fold; fold 1's positives below fold 0's negatives
    pooled = metrics.paired_bootstrap_mean_auc_diff(y, a, b, n_boot=20)
    within = metrics.paired_bootstrap_mean_auc_diff(y, a, b, n_boot=20, strata=fold)
    assert pooled["difference"] == pytest.approx(-0.25)  # pooled AUC of A: (25*50 + 25*25) / 50^2 = 0.75
    assert within["difference"] == 0 and within["a"] == 1 and within["n_aucs"] == 2
