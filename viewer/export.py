"""Pictures out: lossless PNG of rendered images (grey or RGB composites)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def png_bytes(arr: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 HxW grey, HxWx3 RGB or HxWx4 RGBA image (overlays carry alpha), or of a uint16
    HxW grey image (a 16-bit PNG)."""
    grey16 = arr.dtype == np.uint16 and arr.ndim == 2
    if not grey16 and (
        arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)))
    ):
        raise ValueError(f"expected uint8 HxW, HxWx3 or HxWx4 or uint16 HxW, got {arr.dtype} {arr.shape}")
    if arr.ndim == 3:  # OpenCV is BGR
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    # Level 1: several times faster than the default on full-resolution radiographs, still lossless.
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    # Encode in memory then write: cv2.imwrite mishandles non-ASCII paths on some platforms.
    Path(path).write_bytes(png_bytes(arr))
