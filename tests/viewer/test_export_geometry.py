from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from viewer import dicom_io, export, geometry, windowing


def test_png_export_is_lossless(shared_data, tmp_path):
    picture = windowing.render(dicom_io.load(shared_data / "dicom/siim_cr_chest_pa_1024_jpeg_mono1_variant.dcm"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(export.png_bytes(picture)))), picture)
    export.write_png(tmp_path / "out.png", picture)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), picture)


def test_rgb_export_keeps_channel_order():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200  # red
    decoded = np.asarray(Image.open(io.BytesIO(export.png_bytes(rgb))).convert("RGB"))
    assert np.array_equal(decoded, rgb)


def test_16_bit_grey_export_keeps_every_value():
    ramp = (np.arange(64 * 64, dtype=np.uint32) * 16).astype(np.uint16).reshape(64, 64)
    decoded = np.asarray(Image.open(io.BytesIO(export.png_bytes(ramp))))
    assert decoded.dtype in (np.uint16, np.int32) and np.array_equal(decoded, ramp)


def test_export_refuses_non_display_arrays():
    with pytest.raises(ValueError):
        export.png_bytes(np.zeros((64, 64), np.float32))


def test_distance_in_mm_with_spacing():
    # (x, y) points; spacing is (row, column): 0.5 mm between rows scales y, 0.2 mm between columns scales x.
    value, unit = geometry.distance((10, 20), (13, 24), (0.5, 0.2))
    assert unit == "mm" and value == pytest.approx(np.hypot(3 * 0.2, 4 * 0.5))


def test_distance_in_pixels_without_spacing():
    assert geometry.distance((10, 20), (13, 24), None) == (5.0, "px")


def test_the_ctr_lines_are_labelled_in_mm_where_the_pixel_spacing_is_known():
    # They read "heart … px" even on images whose spacing the viewer's own measurements use.
    from viewer import overlays

    ctr = {"ratio": 0.5, "heart_row": 600, "heart_x0": 400, "heart_x1": 549, "thorax_row": 500, "thorax_x0": 200,
           "thorax_x1": 499}  # fmt: skip
    heart, thorax = overlays.ctr_shapes(ctr, (0.2, 0.168))  # (row, column): a width runs along a row, in columns
    assert (heart["label"], thorax["label"]) == ("heart 25 mm", "thorax 50 mm · CTR 0.50")  # 150 and 300 columns
    assert (heart["x0"], heart["x1"], heart["y0"], heart["y1"]) == (400, 550, 600, 600)
    heart, thorax = overlays.ctr_shapes(ctr, None)  # no spacing: pixels, as before
    assert (heart["label"], thorax["label"]) == ("heart 150 px", "thorax 300 px · CTR 0.50")
