"""The viewer's value as the pages read it (screens/_canvas.py): what the browser last sent under the element's key
(Streamlit's components v2 state, {"value": ...}), and never the value of another picture."""

import json

from streamlit.testing.v1 import AppTest


def _page():
    import io

    import numpy as np
    import streamlit as st
    from PIL import Image

    from screens._canvas import image_canvas, requested_window

    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(buf, format="PNG")
    image = st.session_state.get("image", "a")
    st.session_state["window_asked"] = requested_window("viewer", width=40, height=30, image_id=image)
    st.session_state["returned"] = image_canvas(
        buf.getvalue(), width=40, height=30, pixel_spacing_mm=(0.5, 0.5), window=(128.0, 256.0),
        value_range=(0.0, 255.0), key="viewer", image_id=image,
    )  # fmt: skip


MEASURED = {"x0": 1.0, "y0": 2.0, "x1": 11.0, "y1": 2.0, "length": 5.0, "unit": "mm"}


def _sent(image: str) -> dict:
    """What the viewer sends after a measurement and a W/L drag on `image` (canvas.js emit())."""
    return {"value": {"image": image, "measurements": [MEASURED], "window": {"center": 100.0, "width": 50.0},
                      "annotation": None}}  # fmt: skip


def test_the_viewer_gets_its_picture_and_hands_back_what_the_reader_did_on_it():
    at = AppTest.from_function(_page).run()
    assert not at.exception
    (viewer,) = [e.proto for e in at.get("bidi_component") if e.proto.component_name == "cxr_canvas"]
    data = json.loads(viewer.json)
    assert data["image"].startswith("data:image/png;base64,") and data["image_id"] == "a@40x30"
    assert data["window"] == {"center": 128.0, "width": 256.0} and data["pixel_spacing_mm"] == [0.5, 0.5]
    assert at.session_state["returned"] is None and at.session_state["window_asked"] is None

    at.session_state["viewer"] = _sent("a@40x30")
    at.run()
    assert not at.exception
    assert at.session_state["window_asked"] == (100.0, 50.0)
    assert at.session_state["returned"] == {"measurements": [MEASURED], "window": {"center": 100.0, "width": 50.0},
                                            "annotation": None}  # fmt: skip


def test_a_value_made_on_another_picture_is_never_handed_back():
    at = AppTest.from_function(_page)
    at.session_state["viewer"] = _sent("a@40x30")
    at.session_state["image"] = "b"  # the same key now shows picture b
    at.run()
    assert not at.exception
    assert at.session_state["returned"] is None and at.session_state["window_asked"] is None
