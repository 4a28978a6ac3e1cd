"""What the viewer page needs from a stored image, without Streamlit."""

from __future__ import annotations

from viewer import dicom_io, export, windowing


def display_png(img: dicom_io.DecodedImage, center: float | None, width: float | None, invert: bool) -> bytes:
    """The full-resolution 8-bit picture at a window (None: the header's default), as lossless PNG."""
    window = windowing.Window(center, width) if center is not None and width is not None else None
    return export.png_bytes(windowing.render(img, window, invert))


def value_range(img: dicom_io.DecodedImage) -> tuple[float, float]:
    """Smallest and largest modality value: the span a mouse window/level drag may cover."""
    values = windowing.modality_values(img)
    return float(values.min()), float(values.max())
