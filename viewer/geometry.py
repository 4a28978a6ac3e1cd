"""Measurements on the image plane. Points are (x, y) = (column, row) in full-resolution pixel coordinates."""
from __future__ import annotations

import math


def distance(
    p0: tuple[float, float], p1: tuple[float, float], pixel_spacing_mm: tuple[float, float] | None
) -> tuple[float, str]:
    """(length, unit): millimetres when the spacing (row, column) is known, else pixels ("px").

    DICOM PixelSpacing is (row spacing, column spacing): the row spacing scales y, the column spacing x.
    """
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    if pixel_spacing_mm is None:
        return math.hypot(dx, dy), "px"
    row_mm, col_mm = pixel_spacing_mm
    return math.hypot(dx * col_mm, dy * row_mm), "mm"
