"""AI overlays as pictures and shapes at the image's full resolution: anatomy outlines or fills, Grad-CAM
heatmaps, the bone-suppressed image, boxes and the cardiothoracic-ratio lines. No Streamlit, no database."""

from __future__ import annotations

import cv2
import numpy as np

from viewer import geometry

# RGB per anatomy label (1 lungs, 2 heart, 3 clavicles): distinct for common colour-vision deficiencies.
ANATOMY_COLOURS = {1: (64, 160, 255), 2: (255, 96, 64), 3: (255, 214, 0)}
ANATOMY_NAMES = {1: "lungs", 2: "heart", 3: "clavicles"}
HEATMAP_COLOURMAPS = {
    "jet": cv2.COLORMAP_JET,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
}


def anatomy_layer(label_map: np.ndarray, style: str = "outline", labels=(1, 2, 3)) -> np.ndarray:
    """RGBA: each structure's outline (line width scaled to the image) or its translucent-ready fill."""
    h, w = label_map.shape
    out = np.zeros((h, w, 4), np.uint8)
    thickness = max(2, round(max(h, w) / 400))
    for label in labels:
        mask = (label_map == label).astype(np.uint8)
        if not mask.any():
            continue
        colour = (*ANATOMY_COLOURS[label], 255)
        if style == "fill":
            out[mask.astype(bool)] = colour
        else:
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, thickness, lineType=cv2.LINE_AA)
    return out


def heatmap_layer(heat: np.ndarray, colourmap: str = "jet", floor: float = 0.2) -> np.ndarray:
    """RGBA heatmap: colour from the map, alpha rising with the value so cold regions stay transparent."""
    h8 = np.clip(heat * 255, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(h8, HEATMAP_COLOURMAPS[colourmap]), cv2.COLOR_BGR2RGB)
    alpha = np.clip((heat - floor) / (1 - floor), 0, 1) * 255
    return np.dstack([rgb, alpha.astype(np.uint8)])


def grey_layer(img: np.ndarray) -> np.ndarray:
    """An opaque RGBA copy of an 8-bit grey picture (the bone-suppressed image laid over the original)."""
    return np.dstack([img, img, img, np.full_like(img, 255)])


def over_grey(img: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """RGB: an RGBA layer laid over a grey picture (float in [0,1] or uint8) by its alpha, for a still image."""
    grey = img if img.dtype == np.uint8 else np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    base = np.dstack([grey] * 3).astype(np.float32)
    alpha = layer[..., 3:4].astype(np.float32) / 255
    return np.round(base * (1 - alpha) + layer[..., :3] * alpha).astype(np.uint8)


def resize_to(arr: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if arr.shape[:2] == tuple(shape):
        return arr
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(arr, (shape[1], shape[0]), interpolation=interp)


def box_shapes(boxes: list[dict], label: str, colour: str = "#ff4081") -> list[dict]:
    return [
        {"type": "rect", "x0": b["x"], "y0": b["y"], "x1": b["x"] + b["w"], "y1": b["y"] + b["h"], "color": colour,
         "label": f"{label} {b['score']:.2f}"}
        for b in boxes
    ]  # fmt: skip


def ctr_shapes(ctr: dict, pixel_spacing_mm: tuple[float, float] | None) -> list[dict]:
    """The two measurement lines of the cardiothoracic ratio, labelled with their widths: in mm where the pixel
    spacing (row, column) is known, as the viewer's own measurements are, else in pixels."""

    def width(x0: int, x1: int) -> str:  # a row of whole pixels x0..x1
        length, unit = geometry.distance((x0, 0), (x1 + 1, 0), pixel_spacing_mm)
        return f"{length:.0f} {unit}"

    return [
        {"type": "line", "x0": ctr["heart_x0"], "y0": ctr["heart_row"], "x1": ctr["heart_x1"] + 1,
         "y1": ctr["heart_row"], "color": "#ff6040", "label": f"heart {width(ctr['heart_x0'], ctr['heart_x1'])}"},
        {"type": "line", "x0": ctr["thorax_x0"], "y0": ctr["thorax_row"], "x1": ctr["thorax_x1"] + 1,
         "y1": ctr["thorax_row"], "color": "#40a0ff",
         "label": f"thorax {width(ctr['thorax_x0'], ctr['thorax_x1'])} · CTR {ctr['ratio']:.2f}"},
    ]  # fmt: skip
