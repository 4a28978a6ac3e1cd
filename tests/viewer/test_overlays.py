"""Overlay layers as pictures: colours and alpha where they should be."""

import numpy as np


def test_over_grey_lays_an_rgba_layer_over_a_grey_picture_by_its_alpha():
    from viewer.overlays import over_grey

    img = np.full((2, 2), 0.5, np.float32)
    layer = np.zeros((2, 2, 4), np.uint8)
    layer[0, 0] = (255, 0, 0, 255)  # opaque red
    layer[1, 1] = (0, 0, 255, 128)  # half blue
    out = over_grey(img, layer)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (128, 128, 128)
    assert tuple(out[1, 1]) == (64, 64, 192)
