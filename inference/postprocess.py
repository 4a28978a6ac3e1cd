"""Pure numpy/opencv post-processing of model outputs (no torch): masks, CTR, heatmap boxes."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from inference.types import Box, CtrResult

NO_FINDING = "No Finding"

LUNGS, HEART, CLAVICLES = 1, 2, 3


def largest_components(mask: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask with only the `n` largest 8-connected components of `mask` (nonzero = foreground)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (np.asarray(mask) != 0).astype(np.uint8), connectivity=8
    )
    if count - 1 <= n:  # label 0 is background
        return labels > 0
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.argsort(areas, kind="stable")[::-1][:n]
    return np.isin(labels, keep)


def clean_label_map(label_map: np.ndarray) -> np.ndarray:
    """Speckles removed: the 2 largest lung fields, the largest heart, the 2 largest clavicles.

    Lungs are grouped with the clavicles before counting: in SCR-style label maps a clavicle crosses each lung
    and cuts its apex off as a separate island (most JSRT ground-truth maps have 3-6 lung islands), and a
    plain "2 largest lung components" would delete those apices. Removed pixels become background.
    """
    lungs, heart, clavicles = (label_map == c for c in (LUNGS, HEART, CLAVICLES))
    out = np.zeros_like(label_map)
    out[largest_components(lungs | clavicles, 2) & lungs] = LUNGS
    out[largest_components(heart, 1)] = HEART
    out[largest_components(clavicles, 2)] = CLAVICLES
    return out


def _widest_row(mask: np.ndarray) -> tuple[int, int, int] | None:
    """(row, x0, x1) of the row whose outermost foreground pixels are farthest apart; first such row on ties."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    sub = mask[rows]
    x0 = sub.argmax(axis=1)
    x1 = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    i = int(np.argmax(x1 - x0))
    return int(rows[i]), int(x0[i]), int(x1[i])


def cardiothoracic_ratio(label_map: np.ndarray) -> CtrResult | None:
    """Widest horizontal heart width / widest horizontal thoracic width (outer extent of both lungs on a row).

    The two widths are measured on their own rows, as a reader does on a PA film. None when heart or lungs are
    absent. Pixel counts are inclusive (x1 - x0 + 1), so the ratio does not depend on pixel spacing.
    """
    heart = _widest_row(label_map == HEART)
    thorax = _widest_row(label_map == LUNGS)
    if heart is None or thorax is None:
        return None
    (hr, hx0, hx1), (tr, tx0, tx1) = heart, thorax
    return CtrResult(
        ratio=(hx1 - hx0 + 1) / (tx1 - tx0 + 1),
        heart_row=hr, heart_x0=hx0, heart_x1=hx1, thorax_row=tr, thorax_x0=tx0, thorax_x1=tx1,
    )  # fmt: skip


# Limits of a plausible frontal chest label map. The 196 JSRT reference maps lie well inside them (lung fields
# 18-46 % of the image, heart 5.8-13 %, CTR 0.35-0.63, smaller lung field >= 56 % of the larger, heart centre
# 60-85 % down the lungs' height); they are set wide so that only gross failures trip them: a lateral or
# non-chest image, a paediatric film in a large frame, a white-out, an inverted image.
PLAUSIBLE = {
    "lung_fraction": (0.05, 0.65),
    "heart_fraction": (0.01, 0.25),
    "ctr": (0.25, 0.80),
    "lung_balance": 0.2,  # smaller lung field / larger one
    "heart_depth": (0.4, 1.05),  # heart centre's row within the lungs' rows, 0 = apex, 1 = lowest lung row
}


def anatomy_problems(label_map: np.ndarray, ctr: CtrResult | None) -> list[str]:
    """Why a label map does not look like the anatomy of a frontal chest radiograph (empty when it does).

    A model asked to outline lungs and heart on an image unlike its training images still returns outlines; a
    CTR measured on them is a number with no meaning. These checks catch the gross failures so that the
    measurement is withheld with the reason instead of being shown as if it were valid."""
    lim = PLAUSIBLE
    lungs = (label_map == LUNGS) | (label_map == CLAVICLES)  # clavicles cut the apices off the lung fields
    heart = label_map == HEART
    problems = []
    heart_yx = np.nonzero(heart)
    lung_fraction, heart_fraction = float(lungs.mean()), float(heart.mean())
    if not lim["lung_fraction"][0] <= lung_fraction <= lim["lung_fraction"][1]:
        problems.append(f"lung fields cover {lung_fraction:.0%} of the image")
    if not lim["heart_fraction"][0] <= heart_fraction <= lim["heart_fraction"][1]:
        problems.append(f"heart covers {heart_fraction:.1%} of the image")
    count, _, stats, centroids = cv2.connectedComponentsWithStats(lungs.astype(np.uint8), connectivity=8)
    order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1] + 1
    if count < 3:
        problems.append("one lung field only")
    else:
        big, small = order[0], order[1]
        balance = stats[small, cv2.CC_STAT_AREA] / stats[big, cv2.CC_STAT_AREA]
        if balance < lim["lung_balance"]:
            problems.append(f"the smaller lung field is {balance:.0%} of the larger (joined or one missing)")
        if heart.any():
            hx = float(heart_yx[1].mean())
            lo, hi = sorted((centroids[big][0], centroids[small][0]))
            if not lo <= hx <= hi:
                problems.append("the heart is not between the lung fields")
    if heart.any() and (rows := np.flatnonzero((label_map == LUNGS).any(axis=1))).size:
        depth = (float(heart_yx[0].mean()) - rows[0]) / max(1, rows[-1] - rows[0])
        if not lim["heart_depth"][0] <= depth <= lim["heart_depth"][1]:
            problems.append("the heart is not in the lower chest")
    if ctr is not None and not lim["ctr"][0] <= ctr.ratio <= lim["ctr"][1]:
        problems.append(f"CTR {ctr.ratio:.2f} is outside {lim['ctr'][0]:.2f}-{lim['ctr'][1]:.2f}")
    return problems


def clip_to_mask(heatmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Heatmap zeroed outside `mask` (nonzero = inside), e.g. `label_map == LUNGS`; values are not rescaled."""
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ in shape")
    return np.where(mask != 0, heatmap, 0).astype(np.float32)


def heatmap_boxes(heatmap: np.ndarray, threshold: float = 0.5, min_area_frac: float = 0.002) -> list[Box]:
    """Boxes around the connected regions where heatmap >= threshold, in input pixels, highest score first.

    Regions smaller than `min_area_frac` of the image are dropped (0.002 of 1024x1024 is about 45x45 px, far
    below the resolution of a 7x7 Grad-CAM). Score = maximum of the heatmap inside the box.
    """
    count, _, stats, _ = cv2.connectedComponentsWithStats(
        (heatmap >= threshold).astype(np.uint8), connectivity=8
    )
    min_area = min_area_frac * heatmap.size
    boxes = []
    for x, y, w, h, area in stats[1:]:
        if area >= min_area:
            boxes.append(Box(int(x), int(y), int(w), int(h), float(heatmap[y : y + h, x : x + w].max())))
    return sorted(boxes, key=lambda b: b.score, reverse=True)


def positives(probabilities: Mapping[str, float], thresholds: Mapping[str, float]) -> dict[str, bool]:
    """{label: flagged}: a score at or over its operating point, except "No Finding", which is flagged only while
    no finding is: "no finding" beside a flagged finding contradicts itself, and the finding is what a reader must
    check. A label without an operating point is not flagged."""
    flagged = {label: label in thresholds and float(p) >= float(thresholds[label]) for label, p in probabilities.items()}
    if flagged.get(NO_FINDING) and any(v for label, v in flagged.items() if label != NO_FINDING):
        flagged[NO_FINDING] = False
    return flagged
