"""Pure numpy pre-processing of images before a network sees them (no torch), shared by runner and training."""

from __future__ import annotations

import numpy as np


def stretch_contrast(img: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Percentiles `low_pct`..`high_pct` of the image mapped linearly onto 0..1 (clipped), float32.

    Radiographs reach the models with very different windows: a few JSRT files use only grey levels
    0.94-1.0, and washed-out DX exports are common. Stretching each image makes a model see the anatomy, not
    the export. Percentiles come from every 4th row and column (the same figures to within a grey level, 16x
    fewer pixels to sort). A flat image is returned unchanged.
    """
    a = np.asarray(img, np.float32)
    lo, hi = np.percentile(a[::4, ::4], (low_pct, high_pct))
    if hi - lo < 1e-3:
        return a
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
