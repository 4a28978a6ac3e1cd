"""From stored pixel values to the 8-bit picture a reader sees (DICOM PS3.3 C.11 and C.7.6.3.1.2).

Pipeline: stored value -> Modality LUT Sequence or RescaleSlope/Intercept -> VOI (VOI LUT Sequence, or a window
with the header's VOILUTFunction: LINEAR, LINEAR_EXACT or SIGMOID) -> 0..255 -> MONOCHROME1 inversion, so
that dense tissue is always bright -> optional user inversion.

Stored data are always integers of at most 16 bits (dicom_io guarantees it), so the whole pipeline is computed
once over every value the stored dtype can hold (256 or 65536 entries, in float64 on the original bit depth)
and the image is mapped with a single table lookup: no float copy of the image is ever made for display.

Nothing here raises on a DecodedImage, whatever its header said: an unusable rescale is the identity (as
dicom_io decides), and a window that is not finite or not positive is replaced by the full range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from viewer.dicom_io import DecodedImage, usable_rescale


@dataclass(frozen=True)
class Window:
    center: float
    width: float


def modality_values(img: DecodedImage) -> np.ndarray:
    """float32 HxW after the Modality LUT or rescale: the values windows are expressed in."""
    table = _modality(img, _domain(img.stored).astype(np.float64)).astype(np.float32)
    return np.take(table, img.stored)


def default_window(img: DecodedImage) -> Window | None:
    """The window of the default display.

    None when the header's VOI LUT Sequence is the default instead (render(img) applies it). Otherwise the
    header's first WindowCenter/WindowWidth pair; without one, the full range: for PNG/JPEG the range of their
    bit depth (so that an 8-bit image shows exactly as stored), for DICOM the smallest to largest modality
    value in the image.
    """
    if img.voi_lut is not None:
        return None
    h = img.header
    if h.window_center is not None and h.window_width is not None and _usable(Window(h.window_center, h.window_width)):
        return Window(h.window_center, h.window_width)
    if h.source_format != "dicom":
        return _span(0.0, float(2**h.bits_stored - 1))
    return _span(*_value_range(img))


# Presets as (low, high) percentiles of attenuation: 0 is the least attenuating (air, lungs), 100 the most
# (bone, metal). A window spans the modality values found at those two percentiles.
_PRESET_PERCENTILES = {
    "Lung": (1.0, 60.0),
    "Soft tissue / mediastinum": (40.0, 99.0),
    "Bone": (60.0, 99.9),
}
_PRESET_SAMPLE = 250_000  # pixels; percentiles of a regular subsample are stable and ~20x cheaper


def presets(img: DecodedImage) -> dict[str, Window]:
    """Named windows: "Full range", "Lung", "Soft tissue / mediastinum", "Bone".

    Radiograph values are not Hounsfield units: their scale depends on the detector, its processing and
    the exposure, so CT-style fixed windows (lung -600/1500, ...) mean nothing here. The presets are derived from
    this image's own value distribution instead (see _PRESET_PERCENTILES), counting attenuation upwards
    whatever the photometric interpretation (MONOCHROME1 stores dense tissue as low values). They are
    heuristics for a first look, not calibrated tissue windows. The header default is `default_window`.
    """
    step = max(1, int(np.sqrt(img.stored.size / _PRESET_SAMPLE)))
    values = _modality(img, img.stored[::step, ::step].astype(np.float64))
    out = {"Full range": _span(*_value_range(img))}
    for name, (lo, hi) in _PRESET_PERCENTILES.items():
        if img.monochrome1:
            lo, hi = 100.0 - hi, 100.0 - lo
        a, b = np.percentile(values, [lo, hi])
        out[name] = _span(float(a), float(b))
    return out


def render(img: DecodedImage, window: Window | None = None, invert: bool = False) -> np.ndarray:
    """uint8 HxW at full resolution.

    window=None is the default display (VOI LUT Sequence or default_window). A given window is applied with the
    header's VOILUTFunction. MONOCHROME1 is inverted so bone is bright; `invert` flips the result once more.
    """
    domain = _modality(img, _domain(img.stored).astype(np.float64))
    if window is None and img.voi_lut is not None:
        y = img.voi_lut(domain) / max(1, 2**img.voi_lut.bits - 1)
    else:
        y = _voi(domain, window if window is not None and _usable(window) else _default_or_full(img), img.voi_lut_function)
    lut = np.floor(np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # round half up
    if img.monochrome1 != invert:
        lut = 255 - lut  # on the 8-bit table, so inverse pictures are exact complements
    return np.take(lut, img.stored)


def _domain(stored: np.ndarray) -> np.ndarray:
    """Every value the stored dtype can hold, laid out so that table[stored] finds it: signed values' negative
    half sits in the upper half of the table, where numpy's negative indices land."""
    bits = stored.dtype.itemsize * 8
    return np.arange(2**bits, dtype=f"uint{bits}").view(stored.dtype)


def _default_or_full(img: DecodedImage) -> Window:
    """default_window, or the full range where the default is the VOI LUT (a user window that is unusable)."""
    return default_window(img) or _span(*_value_range(img))


def _usable(window: Window) -> bool:
    return math.isfinite(window.center) and math.isfinite(window.width) and window.width > 0


def _modality(img: DecodedImage, x: np.ndarray) -> np.ndarray:
    if img.modality_lut is not None:
        return img.modality_lut(x)
    if not usable_rescale(img.rescale_slope, img.rescale_intercept):
        return x
    return x * img.rescale_slope + img.rescale_intercept


def _value_range(img: DecodedImage) -> tuple[float, float]:
    lo, hi = int(img.stored.min()), int(img.stored.max())
    values = _modality(img, np.arange(lo, hi + 1, dtype=np.float64))
    return float(values.min()), float(values.max())


def _span(lo: float, hi: float) -> Window:
    """The LINEAR window that maps `lo` to 0 and `hi` to 255 exactly (PS3.3 C.11.2.1.2.1)."""
    return Window((lo + hi + 1.0) / 2.0, hi - lo + 1.0)


def _voi(x: np.ndarray, window: Window, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 window functions, output in [0, 1] (clipping gives the edge cases)."""
    c, w = window.center, window.width
    if function == "SIGMOID":
        return 0.5 * (1.0 + np.tanh(2.0 * (x - c) / w))  # == 1 / (1 + exp(-4 (x - c) / w)), without overflow
    if function == "LINEAR_EXACT":
        return (x - c) / w + 0.5
    if w <= 1:  # LINEAR needs w >= 1; narrower is a threshold at the same place
        return (x > c - 0.5).astype(np.float64)
    return (x - (c - 0.5)) / (w - 1) + 0.5
