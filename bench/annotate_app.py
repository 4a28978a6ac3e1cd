"""The annotation editor alone on a 2048 x 2048 radiograph (a real NIH film scaled up), for bench_annotate.py."""

import io
import os
from pathlib import Path

import cv2
import numpy as np
import streamlit as st
from PIL import Image

from screens._canvas import image_canvas

SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
SIZE = 2048

pixels = np.asarray(Image.open(min((SHARED / "data" / "nih" / "images").glob("*.png"))).convert("L"))
pixels = cv2.resize(pixels, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
buf = io.BytesIO()
Image.fromarray(pixels).save(buf, format="PNG")
value = image_canvas(
    buf.getvalue(), width=SIZE, height=SIZE, pixel_spacing_mm=None, key="bench", image_id="bench",
    annotate={"token": "bench", "labels": ["Mass"], "structures": [{"value": 1, "name": "lungs", "color": "#2196f3"}],
              "boxes": [], "mask": None},
)  # fmt: skip
st.write({"seq": (value or {}).get("annotation", {}) and value["annotation"]["seq"]})
