"""A tiny app for tests/e2e/test_canvas_component.py: the viewer on a real radiograph, and its value."""

import io
import json
import os
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from screens._canvas import image_canvas, requested_window

# Image pixels of the overlay the test looks for: a translucent red layer and a labelled box on top of it.
BOX = (300, 100, 420, 200)
VALUE_RANGE = (0.0, 255.0)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def default_image() -> Path:
    folder = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nih" / "images"
    return min(folder.glob("*.png"))


pixels = np.asarray(Image.open(os.environ.get("CANVAS_TEST_IMAGE") or default_image()).convert("L"))
# Crop to 4:3 so that a stretched picture or swapped axes show up in the test's coordinates.
pixels = pixels[: pixels.shape[1] * 3 // 4]
# Study B is another picture of the same size: the viewer must not carry A's view or measurements over.
study = st.radio("Study", ["A", "B"], horizontal=True, key="study")
if study == "B":
    pixels = np.fliplr(pixels)
height, width = pixels.shape

center, win_width = requested_window("canvas", width=width, height=height, image_id=study) or (127.5, 255.0)
# What the real pages do at full bit depth, here on the 8-bit test picture.
shown = np.clip((pixels - (center - win_width / 2)) / win_width * 255, 0, 255).astype(np.uint8)

layer = np.zeros((height, width, 4), np.uint8)
x0, y0, x1, y1 = BOX
layer[y0:y1, x0:x1] = (255, 0, 0, 255)

result = image_canvas(
    png(shown),
    width=width,
    height=height,
    pixel_spacing_mm=(0.5, 0.5),
    window=(center, win_width),
    value_range=VALUE_RANGE,
    layers=[{"name": "red box", "png": png(layer), "opacity": 0.4, "visible": True}],
    shapes=[{"type": "rect", "x0": x0, "y0": y0, "x1": x1, "y1": y1, "color": "#00e5ff", "label": "AI box"}],
    key="canvas",
    image_id=study,
)
st.code(json.dumps(result), language="json")
