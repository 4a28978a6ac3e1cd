"""Pictures out: lossless PNG of rendered images (grey or RGB composites)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def png_bytes(arr: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 HxW grey or HxWx3 RGB image."""
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected uint8 HxW or HxWx3, got {arr.dtype} {arr.shape}")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)  # OpenCV encodes BGR
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    # Encode in memory then write: cv2.imwrite mishandles non-ASCII paths on some platforms.
    Path(path).write_bytes(png_bytes(arr))
