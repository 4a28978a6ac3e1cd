"""Align a prior film to the current one on their lung masks, and the pictures that come of it.

Pure (numpy + OpenCV; no Streamlit, no database). The transform is a similarity (position, size, a small
rotation: the same patient standing a little differently, AP magnifying more than PA), started from the masks'
moments and refined by ECC on the blurred masks. It is refused, with a reason a reader understands, where the masks are
missing or tiny, where the fit leaves the lungs poorly overlapping, or where the transform is implausible for
two chest films (large rotation, extreme scale, shear): a wrong difference image is worse than none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

WORK = 128  # both masks are registered at WORK x WORK: fast, and lungs need no finer detail to align
MIN_AREA_FRACTION = 0.03  # lungs cover about a quarter to a half of a chest film; under this it is no mask
MIN_IOU = 0.65  # lungs overlap at least this much once aligned, else the alignment is not trusted
MAX_ROTATION_DEG = 15.0
SCALE_STEPS = (0.88, 0.94, 1.0, 1.06, 1.12)  # tried around the masks' area ratio, which disease can bias
FINE_SCALE_STEPS = (0.97, 0.985, 1.015, 1.03)  # then around the best of those
SCALE_RANGE = (0.25, 4.0)  # prior pixels per current pixel: films come in many sizes
MAX_ANISOTROPY = 1.5  # one axis stretched this much more than the other: pixels are square, chests are not that
MAX_AFFINE_ANISOTROPY = 1.25  # what the affine refinement may stretch one axis more than the other
MIN_HEART_FRACTION = 0.005  # a heart outline smaller than this (of the film) tells no side
MIN_HEART_OFFSET = 0.02  # the heart's centroid this far (of the film's width) off the lungs' midline tells a side
MIRRORED = "the prior looks mirrored left–right (aligned on the lungs, its heart is not on the current heart's side)"


@dataclass(frozen=True)
class Registration:
    """matrix: 2x3, maps a current-film pixel (x, y, 1) to the prior film's pixel; None when refused.
    iou: lung overlap after alignment (None when there was nothing to measure); reason: why it was refused."""

    matrix: np.ndarray | None
    iou: float | None
    iou_before: float | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.matrix is not None


def _refused(reason: str, iou: float | None = None, iou_before: float | None = None) -> Registration:
    return Registration(None, iou, iou_before, reason)


def _work_mask(mask: np.ndarray) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), (WORK, WORK), interpolation=cv2.INTER_AREA)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _centroid_area(mask: np.ndarray) -> tuple[tuple[float, float], float]:
    m = cv2.moments(mask, binaryImage=False)
    return (m["m10"] / m["m00"], m["m01"] / m["m00"]), m["m00"]


def _to_full(w: np.ndarray, fixed_shape: tuple[int, int], moving_shape: tuple[int, int]) -> np.ndarray:
    """The work-frame transform in the films' own pixels: moving = S_m^-1 W S_f current."""
    sf = np.diag([WORK / fixed_shape[1], WORK / fixed_shape[0]])
    sm_inv = np.diag([moving_shape[1] / WORK, moving_shape[0] / WORK])
    return np.hstack([sm_inv @ w[:, :2] @ sf, sm_inv @ w[:, 2:]])


def _implausible(w: np.ndarray, max_anisotropy: float = MAX_ANISOTROPY) -> str | None:
    """Why a transform (in the films' own square pixels) cannot be two films of one chest, or None: a plausible
    one is near a similarity."""
    lin = w[:, :2].astype(np.float64)
    if not np.all(np.isfinite(lin)) or abs(np.linalg.det(lin)) < 1e-6:
        return "the alignment is degenerate (it collapses the image)"
    if np.linalg.det(lin) < 0:
        return "the alignment would mirror the film (left and right swapped)"
    u, sv, vt = np.linalg.svd(lin)
    rot = u @ vt
    angle = math.degrees(math.atan2(rot[1, 0], rot[0, 0]))
    if abs(angle) > MAX_ROTATION_DEG:
        return f"the alignment needs a {abs(angle):.0f}° rotation (more than {MAX_ROTATION_DEG:.0f}°)"
    if sv.min() < SCALE_RANGE[0] or sv.max() > SCALE_RANGE[1]:
        return f"the alignment needs a scale of {sv.min():.2f}–{sv.max():.2f} (outside {SCALE_RANGE[0]}–{SCALE_RANGE[1]})"
    if sv.max() / sv.min() > max_anisotropy:
        return f"the alignment stretches one axis {sv.max() / sv.min():.1f}× more than the other"
    return None


def _heart_offset(heart: np.ndarray, midline_x: float) -> float | None:
    """The heart's centroid right (+) or left (-) of the midline, in work pixels; None where there is no heart."""
    return None if heart.mean() < MIN_HEART_FRACTION else _centroid_area(heart)[0][0] - midline_x


def _mirrored(w: np.ndarray, current_heart, prior_heart, midline_x: float) -> bool:
    """Whether the prior's heart, carried into the current frame by w, is not on the current heart's side of the
    current lungs' midline (not even half as far out): both lungs together are nearly symmetric, so the lungs
    alone align a film flipped left–right about as well as the right one, its heart then near the midline or
    across it."""
    if current_heart is None or prior_heart is None:
        return False
    now = _heart_offset(_work_mask(current_heart > 0), midline_x)
    back = cv2.warpAffine(_work_mask(prior_heart > 0), w, (WORK, WORK), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    then = _heart_offset(back, midline_x)
    if now is None or then is None or abs(now) < MIN_HEART_OFFSET * WORK:
        return False  # no heart outline on a film, or a heart too central to tell a side
    return then * math.copysign(1.0, now) < abs(now) / 2


def register(
    current_lungs: np.ndarray,
    prior_lungs: np.ndarray,
    current_heart: np.ndarray | None = None,
    prior_heart: np.ndarray | None = None,
) -> Registration:
    """Align the prior's lung mask (bool or 0/1, its film's size) to the current's (its film's size). The hearts
    (the same sizes), where given, tell left from right: a prior whose heart lands on the other side is refused.

    A similarity (shift, rotation, one scale): disease changes a lung outline (a consolidation drops out of an
    AI's mask), and a full affine fit bends the whole film to follow it; a similarity cannot. For each scale
    near the masks' area ratio, ECC finds the rotation and shift on the blurred masks (their edges become slopes
    it can climb); the scale whose fit overlaps best wins."""
    for name, mask in (("current", current_lungs), ("prior", prior_lungs)):
        if mask is None or mask.ndim != 2 or mask.mean() < MIN_AREA_FRACTION:
            return _refused(f"the {name} film has no usable lung outline")
    fixed, moving = _work_mask(current_lungs > 0), _work_mask(prior_lungs > 0)
    (cf, af), (cm, am) = _centroid_area(fixed), _centroid_area(moving)
    k0 = math.sqrt(am / af)
    fixed_bin, blurred = fixed > 0.5, cv2.GaussianBlur(fixed, (0, 0), 4)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)

    def overlap(w: np.ndarray) -> float:
        back = cv2.warpAffine(moving, w, (WORK, WORK), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        return _iou(fixed_bin, back > 0.5)

    def centred(k: float) -> np.ndarray:
        return np.array([[k, 0, cm[0] - k * cf[0]], [0, k, cm[1] - k * cf[1]]], np.float32)

    iou_before = overlap(centred(k0))

    def rigid_at(k: float) -> tuple[float, np.ndarray] | None:
        # The prior shrunk by k, so that a rigid (Euclidean) ECC fit of it is a similarity of the original.
        shrunk = cv2.warpAffine(moving, np.float32([[k, 0, 0], [0, k, 0]]), (WORK, WORK),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)  # fmt: skip
        e = np.float32([[1, 0, cm[0] / k - cf[0]], [0, 1, cm[1] / k - cf[1]]])
        try:
            _, e = cv2.findTransformECC(blurred, cv2.GaussianBlur(shrunk, (0, 0), 4), e, cv2.MOTION_EUCLIDEAN,
                                        criteria, None, 5)  # fmt: skip
        except cv2.error:
            return None  # no convergence at this scale
        w = e * k  # moving(k * (R x + t)): linear part and shift both scale by k
        return overlap(w), w

    best: tuple[float, np.ndarray] | None = None
    for steps, around in ((SCALE_STEPS, k0), (FINE_SCALE_STEPS, None)):
        if around is None:  # the fine pass: around the coarse pass's best scale
            if best is None:
                break
            around = math.sqrt(abs(np.linalg.det(best[1][:, :2].astype(np.float64))))
        for k in around * np.array(steps):
            if (fit := rigid_at(float(k))) is not None and (best is None or fit[0] > best[0]):
                best = fit
    if best is None:
        return _refused("the lung outlines could not be aligned (the fit did not converge)", None, iou_before)
    # Then an affine refinement from there: a deeper breath makes the lungs taller, not wider. Kept only where
    # it overlaps better and stays plausible (no shear or stretch beyond what breathing does).
    try:
        _, a = cv2.findTransformECC(blurred, cv2.GaussianBlur(moving, (0, 0), 4), best[1].copy(),
                                    cv2.MOTION_AFFINE, criteria, None, 5)  # fmt: skip
    except cv2.error:
        a = None
    plausible = a is not None and _implausible(
        _to_full(a, current_lungs.shape, prior_lungs.shape), MAX_AFFINE_ANISOTROPY) is None  # fmt: skip
    if plausible and (iou_a := overlap(a)) > best[0]:
        best = (iou_a, a)
    iou, w = best
    full = _to_full(w, current_lungs.shape, prior_lungs.shape)
    if (why := _implausible(full)) is not None:
        return _refused(why, None, iou_before)
    if _mirrored(w, current_heart, prior_heart, cf[0]):
        return _refused(MIRRORED, iou, iou_before)
    if iou < MIN_IOU:
        return _refused(
            f"the lungs overlap only {iou:.0%} after alignment (at least {MIN_IOU:.0%} needed)", iou, iou_before
        )
    return Registration(full, iou, iou_before)


def warp_to_current(prior: np.ndarray, matrix: np.ndarray, current_shape: tuple[int, int]) -> np.ndarray:
    """The prior picture resampled onto the current film's pixels (outside the prior's field: 0)."""
    h, w = current_shape
    return cv2.warpAffine(prior, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def coverage(matrix: np.ndarray, prior_shape: tuple[int, int], current_shape: tuple[int, int]) -> np.ndarray:
    """Where the warped prior has pixels of its own (bool, current film's size)."""
    ones = np.full(prior_shape, 255, np.uint8)
    return cv2.warpAffine(ones, matrix, current_shape[::-1], flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0


def difference(current: np.ndarray, prior_aligned: np.ndarray, lungs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """current − aligned prior as an 8-bit picture: mid-grey where nothing changed, brighter where the current
    film is brighter (new opacity), darker where it cleared. The prior's grey levels are first matched to the
    current's inside the lungs (mean and spread), as two exposures differ; outside the prior's field: mid-grey."""
    cur, pri = current.astype(np.float32), prior_aligned.astype(np.float32)
    region = lungs & valid
    if region.sum() > 100:
        cs, ps = cur[region], pri[region]
        pri = (pri - ps.mean()) * (cs.std() / max(ps.std(), 1e-3)) + cs.mean()
    diff = np.where(valid, cur - pri, 0.0)
    return np.clip(128 + diff, 0, 255).astype(np.uint8)


def fit_into(picture: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """picture scaled to fit `shape` (rows, columns), aspect kept, centred on black: an unaligned prior shown in
    the current film's frame so that both panes zoom and pan together."""
    h, w = shape
    k = min(w / picture.shape[1], h / picture.shape[0])
    nw, nh = max(1, round(picture.shape[1] * k)), max(1, round(picture.shape[0] * k))
    out = np.zeros((h, w, *picture.shape[2:]), picture.dtype)
    y0, x0 = (h - nh) // 2, (w - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(picture, (nw, nh), interpolation=cv2.INTER_AREA)
    return out
