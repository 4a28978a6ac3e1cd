"""Agreement statistics against scikit-learn and hand-computed cases."""

import cv2
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from inference import agreement


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    a = rng.choice(["present", "absent", "uncertain"], 200, p=[0.3, 0.6, 0.1])
    b = np.where(rng.random(200) < 0.7, a, rng.choice(["present", "absent", "uncertain"], 200))
    assert agreement.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    k = agreement.kappa(np.stack([a, b], 1))
    assert k.method == "cohen" and k.n_images == 200
    assert k.ci95[0] < k.kappa < k.ci95[1]
    assert k.percent_agreement == pytest.approx(np.mean(a == b))


def test_fleiss_kappa_of_the_textbook_example():
    # Fleiss (1971) as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories; kappa = 0.210.
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]  # fmt: skip
    ratings = np.array([sum(([c] * n for c, n in enumerate(row)), []) for row in counts])
    assert agreement.fleiss_kappa(ratings) == pytest.approx(0.2099, abs=5e-4)
    k = agreement.kappa(ratings)
    assert k.method == "fleiss" and k.percent_agreement == pytest.approx(0.1)


def test_fleiss_kappa_of_perfect_and_of_undefined_agreement():
    perfect = np.array([["present"] * 3, ["absent"] * 3, ["absent"] * 3])
    assert agreement.fleiss_kappa(perfect) == pytest.approx(1.0)
    # everyone says the same thing everywhere: agreement by chance is total, kappa is undefined (not 1, not NaN)
    same = np.array([["absent"] * 3] * 4)
    assert agreement.fleiss_kappa(same) is None and agreement.kappa(same).kappa is None


def test_boxes_match_one_to_one_by_iou_and_label():
    a = [
        {"label": "Mass", "x": 10, "y": 10, "w": 100, "h": 100},
        {"label": "Nodule", "x": 300, "y": 300, "w": 20, "h": 20},
    ]
    b = [{"label": "Mass", "x": 20, "y": 10, "w": 100, "h": 100},  # IoU 90/110 = 0.818
         {"label": "Mass", "x": 15, "y": 10, "w": 100, "h": 100},  # IoU 0.905: the better one is matched
         {"label": "Effusion", "x": 300, "y": 300, "w": 20, "h": 20}]  # fmt: skip
    assert agreement.iou(a[0], b[0]) == pytest.approx(9000 / 11000)
    assert [(i, j) for i, j, _ in agreement.match_boxes(a, b)] == [(0, 1)]
    assert agreement.box_f1(a, b) == (1, 2, 3)


def _disc(r, size=200):
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, (100, 100), r, 1, -1)
    return m.astype(bool)


def test_dice_and_hd95_on_known_shapes():
    sq = np.zeros((200, 200), bool)
    sq[50:150, 50:150] = True
    shifted = np.roll(sq, 10, axis=1)
    assert agreement.dice(sq, shifted) == pytest.approx(0.9)
    assert agreement.dice(sq, sq) == 1.0 and agreement.dice(sq, ~sq & False) == 0.0
    assert agreement.dice(np.zeros_like(sq), np.zeros_like(sq)) is None
    # concentric discs of radius 30 and 40: every edge point is 10 px from the other edge
    assert agreement.hd95(_disc(30), _disc(40)) == pytest.approx(10.0, abs=1.0)
    assert agreement.hd95(_disc(30), _disc(30)) == 0.0
    assert agreement.hd95(_disc(30), _disc(40), spacing=(0.5, 0.5)) == pytest.approx(5.0, abs=0.5)
    assert agreement.hd95(_disc(30), np.zeros((200, 200), bool)) is None
    # a single far-away speck moves the maximum, not the 95th percentile
    speck = _disc(30).copy()
    speck[5, 5] = True
    assert agreement.hd95(_disc(30), speck) < 2.0
