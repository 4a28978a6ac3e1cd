"""Interactive radiograph viewer: zoom, pan, measure, window/level, overlays.

A hand-written Streamlit components v2 element (screens/_canvas/: viewer.html and viewer.css in its shadow root;
canvas.js and annotate.js, plain JS with no build step, are the body of one function per viewer, mount.js the
module's tail). It lives in the page itself: no frame to load and no handshake before the first picture, the
module is compiled once per tab, and a picture decoded once is drawn again at once on a later visit. The server
sends the 8-bit picture it windowed at full bit depth; the browser previews W/L changes and asks for a re-render.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import streamlit as st

from screens._element import sent

_HERE = Path(__file__).with_name("_canvas")


def _module() -> str:
    body = "\n".join((_HERE / name).read_text() for name in ("canvas.js", "annotate.js"))
    return (
        f"const HTML = {json.dumps((_HERE / 'viewer.html').read_text())};\n\n"
        f"function createViewer(root, host) {{\n{body}\nreturn {{ render, destroy }};\n}}\n\n"
        + (_HERE / "mount.js").read_text()
    )


_component = st.components.v2.component("cxr_canvas", js=_module(), css=(_HERE / "viewer.css").read_text())
_CHROME_PX = 52  # the toolbar's row and the status line around the picture
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _data_url(png: bytes | str) -> str:
    if isinstance(png, str):
        return png if png.startswith("data:") else f"data:image/png;base64,{png}"
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png_size(png: bytes) -> tuple[int, int]:
    if png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("image_png is not a PNG")
    return struct.unpack(">II", png[16:24])


def _identity(image_id: str | None, width: int, height: int) -> str:
    return f"{image_id or ''}@{width}x{height}"


def requested_window(
    key: str, *, width: int, height: int, image_id: str | None = None
) -> tuple[float, float] | None:
    """(center, width) of the reader's last W/L drag in viewer `key` on this image, or None.

    Call it before image_canvas to window the PNG with it in the same run (image_canvas returns it too,
    but only after the PNG was sent).
    """
    value = last_value(key)
    if not value or value.get("image") != _identity(image_id, width, height) or not value.get("window"):
        return None
    return value["window"]["center"], value["window"]["width"]


def preload_viewer(*, key: str) -> None:
    """Mount the viewer's module with no picture (it draws nothing): the browser compiles it now, not on the way to
    the first study a tab opens."""
    _component(key=key, data=None)


def last_value(key: str) -> dict | None:
    """What viewer `key` last sent (see image_canvas), as it is at the start of this run, or None."""
    value = sent(key, "value")
    return value if isinstance(value, dict) else None


def image_canvas(
    image_png: bytes,
    *,
    width: int,
    height: int,
    pixel_spacing_mm: tuple[float, float] | None,
    window: tuple[float, float] | None = None,
    value_range: tuple[float, float] | None = None,
    layers: list[dict] | None = None,
    shapes: list[dict] | None = None,
    key: str,
    view_height: int = 720,
    image_id: str | None = None,
    annotate: dict | None = None,
    compare: dict | None = None,
) -> dict | None:
    """Show `image_png` (width x height pixels) in the interactive viewer and return what the reader did.

    pixel_spacing_mm: (row spacing, column spacing) as DICOM PixelSpacing, or None (lengths in pixels).
    window: (center, width) the PNG was rendered with, and value_range: (min, max) of the modality values;
        both or neither; with them the W/L tool is enabled and reports windows in those units.
    layers: [{"name", "png" (bytes, base64 or data URL, RGBA at image size), "opacity" 0..1, "visible", "clip_x" 0..1 (optional: a swipe, the layer covers only x < clip_x * width)}].
    shapes: [{"type": "line"|"rect", "x0", "y0", "x1", "y1", "color", "label"}] in image pixels.
    image_id: identity of the picture (e.g. SOP Instance UID). When it changes the view is refitted and the
        measurements are dropped; without it only a change of size does that, so pass it when studies
        share a size.
    annotate: the editing tools (screens/_canvas/annotate.js): {"token" (a new one replaces the browser's
        state with this one), "labels" (box labels), "structures" [{"value", "name", "color"}], "boxes"
        [{"label", "x", "y", "w", "h"}], "mask" (a grey PNG label map at image size, bytes or None)}.
    compare: a second pane beside the image that shares its zoom, pan and window preview, in the browser:
        {"png" (bytes, at image size: the other picture already in this image's pixel frame), "caption",
        "current_caption" (the first pane's), "windowed" (whether the window preview applies to it too)}.

    Returns None until the reader measures, windows or edits this image, then
    {"measurements": [{"x0", "y0", "x1", "y1", "length", "unit": "mm"|"px"}] (image pixels),
     "window": {"center", "width"} | None (the last W/L drag; re-render the PNG with it),
     "annotation": None, or with `annotate`: {"token", "seq" (edits so far), "boxes", "mask" (data URL of the
        grey PNG label map, or None while the map is unedited)}}.
    """
    if _png_size(image_png) != (width, height):
        raise ValueError(f"image_png is {_png_size(image_png)}, not {(width, height)}")
    if (window is None) != (value_range is None):
        raise ValueError("window and value_range go together")
    if pixel_spacing_mm is not None and min(pixel_spacing_mm) <= 0:
        raise ValueError(f"pixel spacing must be positive, got {pixel_spacing_mm}")
    if compare is not None and _png_size(compare["png"]) != (width, height):
        raise ValueError(f"the compare picture is {_png_size(compare['png'])}, not {(width, height)}")
    identity = _identity(image_id, width, height)
    args = dict(
        image=_data_url(image_png),
        image_width=width,
        image_height=height,
        image_id=identity,
        pixel_spacing_mm=[float(v) for v in pixel_spacing_mm] if pixel_spacing_mm else None,
        window={"center": float(window[0]), "width": float(window[1])} if window else None,
        value_range=[float(v) for v in value_range] if value_range else None,
        layers=[
            {
                "name": layer["name"],
                "png": _data_url(layer["png"]),
                "opacity": float(layer.get("opacity", 1.0)),
                "visible": bool(layer.get("visible", True)),
                "clip_x": float(layer.get("clip_x", 1.0)),
            }
            for layer in layers or []
        ],
        shapes=[{"label": None, "color": "#00e5ff", **shape} for shape in shapes or []],
        annotate=None if annotate is None else {
            **annotate, "mask": _data_url(annotate["mask"]) if annotate.get("mask") is not None else None,
        },
        compare=None if compare is None else {
            "image": _data_url(compare["png"]), "caption": compare.get("caption", ""),
            "current_caption": compare.get("current_caption", ""), "windowed": bool(compare.get("windowed", True)),
        },
        view_height=view_height,
    )
    # Room for the viewer before its module has drawn it, which happens after the page around it is laid out:
    # without it, what is below would show first where the picture goes, then jump down.
    st.html(f"<style>.st-key-{re.sub(r'[^a-zA-Z0-9_-]', '-', key)} {{ min-height: {view_height + _CHROME_PX}px; }}</style>")
    _component(key=key, data=args, default={"value": None}, on_value_change=lambda: None)
    # The widget value outlives the picture it was made on: never hand back another image's measurements.
    value = last_value(key)
    if not value or value.get("image") != identity:
        return None
    return {"measurements": value["measurements"], "window": value["window"], "annotation": value.get("annotation")}
