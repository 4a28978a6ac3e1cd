"""Contrast stretch applied before the anatomy network (inference/preprocess.py)."""

import numpy as np

from inference.preprocess import stretch_contrast


def test_a_washed_out_copy_is_stretched_back_to_the_original():
    ramp = np.tile(np.linspace(0, 1, 400, dtype=np.float32), (400, 1))
    washed = 0.94 + 0.06 * ramp  # the grey levels of the worst JSRT files
    out = stretch_contrast(washed, 0.0, 100.0)
    # within 0.01: the percentiles come from every 4th row and column
    assert out.dtype == np.float32 and np.abs(out - ramp).max() < 0.01


def test_percentiles_are_clipped_to_the_unit_range():
    ramp = np.tile(np.linspace(0, 1, 1000, dtype=np.float32), (8, 1))
    out = stretch_contrast(ramp, 10.0, 90.0)
    assert out.min() == 0.0 and out.max() == 1.0
    # 10th..90th percentile of a 0..1 ramp is 0.1..0.9: the middle maps linearly, the ends are clipped
    assert abs(out[0, 500] - (ramp[0, 500] - 0.1) / 0.8) < 0.01
    assert (out[:, :100] == 0).all() and (out[:, -100:] == 1).all()


def test_a_flat_image_is_left_alone():
    flat = np.full((64, 64), 0.3, np.float32)
    assert (stretch_contrast(flat) == flat).all()
