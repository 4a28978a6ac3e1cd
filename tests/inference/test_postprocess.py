"""Post-processing on hand-made arrays whose answers are known exactly."""

import numpy as np
import pytest

from inference.postprocess import (
    CLAVICLES,
    HEART,
    LUNGS,
    anatomy_problems,
    cardiothoracic_ratio,
    clean_label_map,
    clip_to_mask,
    heatmap_boxes,
    largest_components,
)
from inference.types import Box


def test_largest_components_keeps_the_n_biggest():
    mask = np.zeros((50, 50), bool)
    mask[0:10, 0:10] = True  # 100 px
    mask[20:25, 20:30] = True  # 50 px
    mask[40:42, 40:45] = True  # 10 px
    kept = largest_components(mask, 2)
    assert kept.sum() == 150 and not kept[41, 41]
    assert largest_components(mask, 5).sum() == 160
    assert largest_components(np.zeros((5, 5), bool), 2).sum() == 0


def test_clean_label_map_drops_speckles_but_keeps_lung_apices_cut_off_by_a_clavicle():
    lm = np.zeros((100, 100), np.uint8)
    lm[20:90, 10:40] = LUNGS
    lm[20:90, 60:90] = LUNGS
    lm[30:33, 5:45] = CLAVICLES  # crosses the left lung: rows 20-29 become a separate lung island (the apex)
    lm[30:33, 55:95] = CLAVICLES
    lm[50:80, 42:58] = HEART
    lm[2, 2] = LUNGS  # speckles
    lm[95, 50] = HEART
    lm[97, 97] = CLAVICLES
    out = clean_label_map(lm)
    assert (out[20:30, 10:40] == LUNGS).all()  # apex kept
    assert out[2, 2] == 0 and out[95, 50] == 0 and out[97, 97] == 0
    assert (out == HEART).sum() == 30 * 16 and (out == CLAVICLES).sum() == 2 * 3 * 40


def test_cardiothoracic_ratio_on_a_synthetic_chest():
    lm = np.zeros((500, 500), np.uint8)
    lm[100:400, 50:200] = LUNGS  # outer extent 50..449 on rows 100-399: thorax 400 px
    lm[100:400, 300:450] = LUNGS
    lm[380:400, 40:200] = LUNGS  # costophrenic widening on rows 380-399: thorax 410 px (40..449)
    for i, row in enumerate(range(250, 350)):  # heart widening downward: widest on row 349, 180..329
        lm[row, 255 - 75 * i // 99 : 255 + 75 * i // 99 + 1] = HEART
    ctr = cardiothoracic_ratio(lm)
    assert (ctr.heart_row, ctr.heart_x0, ctr.heart_x1) == (349, 180, 330)
    assert (ctr.thorax_row, ctr.thorax_x0, ctr.thorax_x1) == (380, 40, 449)
    assert ctr.heart_width == 151 and ctr.thorax_width == 410
    assert ctr.ratio == pytest.approx(151 / 410)


def test_cardiothoracic_ratio_is_none_without_heart_or_lungs():
    lm = np.zeros((10, 10), np.uint8)
    lm[2:8, 1:4] = LUNGS
    assert cardiothoracic_ratio(lm) is None
    lm[:] = 0
    lm[4:6, 4:6] = HEART
    assert cardiothoracic_ratio(lm) is None


def _chest() -> np.ndarray:
    """A plausible frontal chest map: two lung fields, a clavicle over each apex, the heart low and left."""
    lm = np.zeros((400, 400), np.uint8)
    lm[60:330, 60:180] = LUNGS
    lm[60:330, 220:340] = LUNGS
    lm[70:85, 70:190] = CLAVICLES
    lm[70:85, 210:330] = CLAVICLES
    lm[200:310, 170:270] = HEART
    return lm


def test_a_plausible_chest_has_no_anatomy_problems():
    lm = _chest()
    assert anatomy_problems(lm, cardiothoracic_ratio(lm)) == []
    mirrored = lm[:, ::-1].copy()  # situs inversus is anatomy too
    assert anatomy_problems(mirrored, cardiothoracic_ratio(mirrored)) == []


def test_every_jsrt_reference_map_is_plausible(dataset):
    from inference.evaluation import read_label_map

    maps = sorted((dataset("jsrt") / "masks512").glob("*.png"))
    assert len(maps) == 196
    for path in maps:
        lm = read_label_map(path)
        assert anatomy_problems(lm, cardiothoracic_ratio(lm)) == [], path.name


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda lm: lm.__setitem__((slice(None), slice(200, 400)), np.where(lm[:, 200:] == HEART, HEART, 0)),
         "one lung field only"),
        (lambda lm: lm.__setitem__((slice(60, 330), slice(240, 340)), 0), "% of the larger"),
        (lambda lm: lm.__setitem__((slice(0, 400), slice(0, 400)), np.where(lm == HEART, HEART, LUNGS)),
         "lung fields cover"),
        (lambda lm: lm.__setitem__(lm == HEART, 0) or lm.__setitem__((slice(200, 210), slice(200, 210)), HEART),
         "heart covers 0.1%"),
        (lambda lm: lm.__setitem__(lm == HEART, 0) or lm.__setitem__((slice(200, 310), slice(20, 60)), HEART),
         "the heart is not between the lung fields"),
        (lambda lm: lm.__setitem__(slice(None), lm[::-1].copy()), "the heart is not in the lower chest"),
        (lambda lm: lm.__setitem__((slice(200, 310), slice(80, 330)), HEART), "CTR 0.89"),
    ],
)  # fmt: skip
def test_gross_failures_are_named(change, expected):
    lm = _chest()
    change(lm)
    problems = anatomy_problems(lm, cardiothoracic_ratio(lm))
    assert any(expected in p for p in problems), problems


def test_heatmap_boxes_from_blobs():
    yy, xx = np.mgrid[:200, :300]
    heat = 0.9 * np.exp(-((xx - 60) ** 2 + (yy - 50) ** 2) / (2 * 15**2))
    heat += 0.7 * np.exp(-((xx - 220) ** 2 + (yy - 150) ** 2) / (2 * 20**2))
    heat += 0.6 * np.exp(-((xx - 250) ** 2 + (yy - 30) ** 2) / (2 * 1.5**2))  # a few pixels above 0.5
    boxes = heatmap_boxes(heat.astype(np.float32), threshold=0.5, min_area_frac=0.001)
    assert [round(b.score, 3) for b in boxes] == [0.9, 0.7]
    for b, (cx, cy) in zip(boxes, [(60, 50), (220, 150)], strict=True):
        assert b.x < cx < b.x + b.w and b.y < cy < b.y + b.h
        assert b.x >= 0 and b.y >= 0 and b.x + b.w <= 300 and b.y + b.h <= 200
    # The 0.9 blob exceeds 0.5 within r = 15 * sqrt(2 ln 1.8) = 16.2 px: a 33 px wide box centred on 60.
    assert boxes[0] == Box(44, 34, 33, 33, boxes[0].score)
    assert heatmap_boxes(np.zeros((10, 10), np.float32)) == []


def test_clip_to_mask():
    heat = np.full((4, 4), 0.8, np.float32)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    clipped = clip_to_mask(heat, mask)
    assert clipped.dtype == np.float32 and clipped.sum() == pytest.approx(4 * 0.8)
    assert clipped[1, 1] == pytest.approx(0.8) and clipped[0, 0] == 0
    with pytest.raises(ValueError, match="differ in shape"):
        clip_to_mask(heat, mask[:3])


def test_no_finding_is_never_flagged_beside_a_positive_finding():
    from inference.postprocess import positives

    thr = {"No Finding": 0.5, "Effusion": 0.3, "Mass": 0.3}
    # Both over their operating points: the finding stands, "No Finding" does not.
    assert positives({"No Finding": 0.9, "Effusion": 0.4, "Mass": 0.1}, thr) == {
        "No Finding": False, "Effusion": True, "Mass": False,
    }  # fmt: skip
    # No finding flagged: "No Finding" is.
    assert positives({"No Finding": 0.9, "Effusion": 0.2, "Mass": 0.1}, thr)["No Finding"] is True
    # At the operating point counts as positive; a label without one is never flagged.
    assert positives({"Effusion": 0.3, "Hernia": 0.99}, thr) == {"Effusion": True, "Hernia": False}
    assert positives({}, thr) == {}

