"""Agreement between readers: Cohen's kappa (2 readers) and Fleiss' kappa (3 or more) with 95% bootstrap intervals
over images, box F1 after matching by IoU, and Dice / 95% Hausdorff distance between masks. numpy and opencv
only; the caller collects the readers' labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

BOOTSTRAP = 2000
IOU_MATCH = 0.5


@dataclass(frozen=True)
class Kappa:
    method: str  # cohen | fleiss
    kappa: float | None  # None when undefined (every rating the same category: no chance correction possible)
    ci95: tuple[float, float] | None
    percent_agreement: float
    n_images: int


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's kappa of two readers' categorical ratings of the same images."""
    a, b = np.asarray(a), np.asarray(b)
    cats = np.union1d(a, b)
    po = float(np.mean(a == b))
    pe = float(sum(np.mean(a == c) * np.mean(b == c) for c in cats))
    return None if pe == 1.0 else (po - pe) / (1.0 - pe)


def fleiss_kappa(ratings: np.ndarray) -> float | None:
    """Fleiss' kappa of an images x readers array of categories (every image rated by every reader)."""
    ratings = np.asarray(ratings)
    n_raters = ratings.shape[1]
    counts = np.stack([(ratings == c).sum(axis=1) for c in np.unique(ratings)], axis=1).astype(float)
    p_i = (np.sum(counts * counts, axis=1) - n_raters) / (n_raters * (n_raters - 1))
    p_bar = float(p_i.mean())
    p_j = counts.sum(axis=0) / counts.sum()
    pe = float(np.sum(p_j * p_j))
    return None if pe == 1.0 else (p_bar - pe) / (1.0 - pe)


def percent_agreement(ratings: np.ndarray) -> float:
    """Share of images on which every reader gave the same rating."""
    ratings = np.asarray(ratings)
    return float(np.mean(np.all(ratings == ratings[:, :1], axis=1)))


def kappa(ratings: np.ndarray, seed: int = 0) -> Kappa:
    """Cohen's (2 readers) or Fleiss' (3+) kappa of an images x readers array, with a 95% percentile bootstrap
    interval over images (resamples where kappa is undefined are left out; none left: no interval)."""
    ratings = np.asarray(ratings)
    n, k = ratings.shape
    if k < 2:
        raise ValueError("agreement needs two or more readers")
    method = "cohen" if k == 2 else "fleiss"

    def stat(r):
        return cohen_kappa(r[:, 0], r[:, 1]) if k == 2 else fleiss_kappa(r)

    value = stat(ratings) if n else None
    ci = None
    if value is not None and n > 1:
        rng = np.random.default_rng(seed)
        draws = [stat(ratings[rng.integers(0, n, n)]) for _ in range(BOOTSTRAP)]
        draws = np.array([d for d in draws if d is not None])
        if len(draws):
            ci = (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))
    return Kappa(method, value, ci, percent_agreement(ratings) if n else float("nan"), n)


# --- boxes -------------------------------------------------------------------------------------------------------
def iou(a: dict, b: dict) -> float:
    """Intersection over union of two {x, y, w, h} boxes."""
    x0, y0 = max(a["x"], b["x"]), max(a["y"], b["y"])
    x1, y1 = min(a["x"] + a["w"], b["x"] + b["w"]), min(a["y"] + a["h"], b["y"] + b["h"])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a["w"] * a["h"] + b["w"] * b["h"] - inter
    return inter / union if union > 0 else 0.0


def match_boxes(a: list[dict], b: list[dict], threshold: float = IOU_MATCH) -> list[tuple[int, int, float]]:
    """One-to-one matches (index in a, index in b, IoU) of boxes with the same label and IoU >= threshold,
    greedily from the highest IoU (the usual detection-evaluation rule)."""
    pairs = sorted(
        (
            (iou(p, q), i, j)
            for i, p in enumerate(a)
            for j, q in enumerate(b)
            if p.get("label") == q.get("label")
        ),
        reverse=True,
    )
    used_a, used_b, out = set(), set(), []
    for v, i, j in pairs:
        if v >= threshold and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append((i, j, v))
    return out


def box_f1(a: list[dict], b: list[dict]) -> tuple[int, int, int]:
    """(matched, boxes of a, boxes of b): F1 between two readers is 2 * matched / (a + b) over any images."""
    return len(match_boxes(a, b)), len(a), len(b)


# --- masks -------------------------------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when both are empty (nothing to agree on)."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum() + b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def _edge(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)) > 0


def hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float | None:
    """95th percentile of the symmetric surface distances between two masks, in pixels (or in mm with the
    row/column spacing); None when either mask is empty."""
    ea, eb = _edge(a), _edge(b)
    if not ea.any() or not eb.any():
        return None

    def dist_to(edge):
        # Exact Euclidean distance to the nearest edge pixel of the other mask; anisotropic spacing by scaling.
        return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)

    if spacing[0] != spacing[1]:
        ya, xa = np.nonzero(ea)
        yb, xb = np.nonzero(eb)
        pa = np.stack([ya * spacing[0], xa * spacing[1]], 1)
        pb = np.stack([yb * spacing[0], xb * spacing[1]], 1)
        d_ab = np.array([np.min(np.hypot(*(pb - p).T)) for p in pa])
        d_ba = np.array([np.min(np.hypot(*(pa - p).T)) for p in pb])
    else:
        d_ab = dist_to(eb)[ea] * spacing[0]
        d_ba = dist_to(ea)[eb] * spacing[0]
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))
