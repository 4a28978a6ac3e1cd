"""Aligning a prior on the lungs: real hand-drawn lung masks (covid_followup/lung_masks), moved by known
transforms, are put back; what cannot be two films of one chest is refused with a reason."""

import math

import cv2
import numpy as np
import pytest

from viewer import registration

MASKS = ["auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.png",
         "covid-19-pneumonia-49-day4.png"]  # fmt: skip


@pytest.fixture(scope="module", params=MASKS)
def lungs(request, shared_data) -> np.ndarray:
    mask = cv2.imread(str(shared_data / "covid_followup" / "lung_masks" / request.param), cv2.IMREAD_GRAYSCALE)
    assert mask is not None and 0.1 < (mask > 127).mean() < 0.6, "not a lung mask"
    return mask > 127


def _similarity(angle_deg: float, scale: float, tx: float, ty: float, centre) -> np.ndarray:
    """2x3: a current-film pixel -> the prior film's pixel."""
    m = cv2.getRotationMatrix2D(centre, angle_deg, scale)
    m[:, 2] += (tx, ty)
    return m


def _moved(mask: np.ndarray, to_prior: np.ndarray, shape) -> np.ndarray:
    # The prior film: pixel to_prior @ x holds what the current film has at x.
    return cv2.warpAffine(mask.astype(np.uint8), to_prior, shape[::-1], flags=cv2.INTER_NEAREST) > 0


@pytest.mark.parametrize("angle, scale, tx, ty", [(6.0, 1.08, 25.0, -18.0), (-4.0, 0.9, -30.0, 12.0)])
def test_a_known_rigid_move_of_a_real_lung_mask_is_recovered(lungs, angle, scale, tx, ty):
    h, w = lungs.shape
    truth = _similarity(angle, scale, tx, ty, (w / 2, h / 2))
    prior = _moved(lungs, truth, (h, w))
    reg = registration.register(lungs, prior)
    assert reg.ok, reg.reason
    # Where the lungs are, each point lands within 1.5 % of the film's size of where the known move put it.
    ys, xs = np.nonzero(lungs[:: 16, :: 16])
    pts = np.stack([xs * 16, ys * 16, np.ones_like(xs)], axis=1).astype(float)
    err = np.linalg.norm(pts @ reg.matrix.T - pts @ truth.T, axis=1)
    assert err.max() < 0.015 * max(h, w), f"max error {err.max():.1f} px"
    assert reg.iou > 0.9 and reg.iou > reg.iou_before
    # and the warped prior lies on the current film's lungs
    back = registration.warp_to_current(prior.astype(np.uint8) * 255, reg.matrix, (h, w)) > 127
    assert (back & lungs).sum() / (back | lungs).sum() > 0.9


def test_films_of_different_sizes_are_aligned_in_their_own_pixels(lungs):
    h, w = lungs.shape
    small = cv2.resize(lungs.astype(np.uint8), (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_NEAREST) > 0
    reg = registration.register(lungs, small)
    assert reg.ok, reg.reason
    np.testing.assert_allclose(reg.matrix[:, :2], np.eye(2) * 0.75, atol=0.02)


def test_a_prior_without_lungs_is_refused_with_the_reason(lungs):
    reg = registration.register(lungs, np.zeros_like(lungs))
    assert not reg.ok and reg.matrix is None
    assert reg.reason == "the prior film has no usable lung outline"


def test_a_degenerate_alignment_is_refused_not_shown(lungs):
    h, w = lungs.shape
    # The same lungs squashed to 40 % of their height: no two films of one chest differ so.
    squashed = np.zeros_like(lungs)
    flat = cv2.resize(lungs.astype(np.uint8), (w, int(h * 0.4)), interpolation=cv2.INTER_NEAREST) > 0
    squashed[h // 3 : h // 3 + flat.shape[0]] = flat
    reg = registration.register(lungs, squashed)
    assert not reg.ok and reg.reason
    assert "stretches one axis" in reg.reason or "overlap only" in reg.reason, reg.reason


def test_a_large_rotation_is_refused(lungs):
    h, w = lungs.shape
    turned = _moved(lungs, _similarity(90.0, 1.0, 0, 0, (w / 2, h / 2)), (h, w))
    reg = registration.register(lungs, turned)
    assert not reg.ok, f"a film turned by 90° was aligned (overlap {reg.iou})"


def test_the_implausibility_check_names_rotation_mirror_and_collapse():
    rot = lambda deg: np.array([[math.cos(math.radians(deg)), -math.sin(math.radians(deg)), 0],  # noqa: E731
                                [math.sin(math.radians(deg)), math.cos(math.radians(deg)), 0]])  # fmt: skip
    assert registration._implausible(rot(5)) is None
    assert "30° rotation" in registration._implausible(rot(30))
    assert "mirror" in registration._implausible(np.array([[-1.0, 0, 0], [0, 1, 0]]))
    assert "degenerate" in registration._implausible(np.array([[1.0, 1, 0], [1, 1, 0]]))


def test_difference_is_mid_grey_where_nothing_changed_and_bright_where_denser_now(lungs):
    rng = np.random.default_rng(0)
    prior = rng.integers(40, 200, lungs.shape).astype(np.uint8)
    current = prior.copy()
    h, w = lungs.shape
    ys, xs = np.nonzero(lungs)
    cy, cx = int(ys.mean()), int(xs.mean())
    current[cy - 20 : cy + 20, cx - 20 : cx + 20] = 255  # a new opacity
    valid = np.ones_like(lungs)
    diff = registration.difference(current, prior, lungs, valid)
    changed = np.zeros_like(lungs)
    changed[cy - 20 : cy + 20, cx - 20 : cx + 20] = True
    assert np.abs(diff[~changed].astype(int) - 128).mean() < 3
    assert diff[changed].mean() > 170
    # Outside the prior's field nothing is claimed.
    valid[:, : w // 4] = False
    assert (registration.difference(current, prior, lungs, valid)[:, : w // 4] == 128).all()


def test_an_unaligned_prior_fits_into_the_current_frame_keeping_its_aspect():
    tall = np.full((200, 100), 255, np.uint8)
    out = registration.fit_into(tall, (100, 300))
    assert out.shape == (100, 300)
    cols = np.nonzero(out.max(axis=0))[0]
    assert (cols.min(), cols.max()) == (125, 174)  # 50 columns wide, centred


# JSRT/SCR label maps (0 background, 1 lungs, 2 heart, 3 clavicles), drawn by hand: the heart tells left from right.
LABEL_MAPS = ["JPCLN001.png", "JPCNN021.png"]


@pytest.fixture(scope="module", params=LABEL_MAPS)
def anatomy(request, shared_data) -> tuple[np.ndarray, np.ndarray]:
    lm = cv2.imread(str(shared_data / "jsrt" / "masks512" / request.param), cv2.IMREAD_UNCHANGED)
    assert lm is not None and 0.15 < (lm == 1).mean() < 0.6 and 0.03 < (lm == 2).mean() < 0.2, "not a label map"
    return lm == 1, lm == 2


def test_a_prior_mirrored_left_right_is_refused_though_its_lungs_overlap(anatomy):
    lungs, heart = anatomy
    # Both lungs together are nearly symmetric: on the lungs alone the mirrored film is aligned, overlapping well.
    alone = registration.register(lungs, lungs[:, ::-1])
    assert alone.ok and alone.iou > 0.65
    reg = registration.register(lungs, lungs[:, ::-1], heart, heart[:, ::-1])
    assert not reg.ok and reg.matrix is None
    assert reg.reason == registration.MIRRORED and "mirrored left–right" in reg.reason


def test_the_same_film_moved_not_mirrored_is_aligned_with_its_heart(anatomy):
    lungs, heart = anatomy
    h, w = lungs.shape
    truth = _similarity(5.0, 1.05, 12.0, -9.0, (w / 2, h / 2))
    reg = registration.register(lungs, _moved(lungs, truth, (h, w)), heart, _moved(heart, truth, (h, w)))
    assert reg.ok, reg.reason
    assert reg.iou > 0.9
