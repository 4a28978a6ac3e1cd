"""The viewer component in a real Chromium: fit, wheel zoom, measuring in mm, W/L round trip, overlays."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.e2e.conftest import VIEWER

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
APP = HERE / "component_app.py"
ARTIFACTS = HERE / "artifacts"
NIH = HERE.parents[2] / "shared" / "data" / "nih" / "images"
SPACING_MM = 0.5  # what component_app passes for rows and columns
BOX = (300, 100, 420, 200)  # component_app's red layer and labelled box, image pixels


def radiograph_path() -> Path:
    env = os.environ.get("CANVAS_TEST_IMAGE")
    if env:
        return Path(env)
    if not NIH.is_dir():
        pytest.skip(f"no test radiographs at {NIH}")
    return min(NIH.glob("*.png"))


@pytest.fixture(scope="module")
def app(run_streamlit):
    path = radiograph_path()
    width = Image.open(path).width
    return run_streamlit(APP, env={"CANVAS_TEST_IMAGE": str(path)}), (
        width,
        width * 3 // 4,
    )  # the app crops to 4:3


def returned(page) -> dict | None:
    return json.loads(page.locator('[data-testid="stCode"] code').inner_text())


def wait_returned(page, check, timeout_s: float = 20.0) -> dict:
    """Poll the value the app prints until `check(value)` holds (each widget change reruns the app)."""
    for _ in range(int(timeout_s * 10)):
        value = returned(page)
        if value and check(value):
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"the app never printed the expected value; last: {returned(page)}")


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def zoom_percent(viewer) -> int:
    return int(re.search(r"Zoom (\d+)%", viewer.locator("#status").inner_text()).group(1))


@pytest.mark.parametrize("dpr", [1, 2])
def test_zoom_measure_window(browser, app, record_errors, dpr):
    url, (width, height) = app
    context = browser.new_context(viewport={"width": 1100, "height": 1000}, device_scale_factor=dpr)
    page = context.new_page()
    errors = record_errors(page)
    page.goto(url)
    viewer = page.locator(VIEWER)
    status = viewer.locator("#status")
    status.get_by_text("Zoom").wait_for(timeout=30_000)
    box = viewer.locator("#overlay").bounding_box()

    # Fit: the whole picture, centred, aspect kept.
    fit = min(box["width"] / width, box["height"] / height)
    left, top = box["x"] + (box["width"] - width * fit) / 2, box["y"] + (box["height"] - height * fit) / 2
    assert zoom_percent(viewer) == round(fit * dpr * 100)
    page.screenshot(path=ARTIFACTS / f"canvas-loaded-dpr{dpr}.png", full_page=True)
    shot = Image.open(io.BytesIO(viewer.locator("#stage").screenshot())).convert("RGB")

    def pixel(x_img: float, y_img: float) -> tuple[int, int, int]:
        """Screenshot colour at an image position, under the fit transform."""
        return shot.getpixel(
            (round((left - box["x"] + x_img * fit) * dpr), round((top - box["y"] + y_img * fit) * dpr))
        )

    x0, y0, x1, y1 = BOX
    r, g, b = pixel((x0 + x1) / 2, (y0 + y1) / 2)
    assert r > g + 60 and r > b + 60, f"red layer not over its image pixels: {(r, g, b)}"
    r, g, b = pixel(x0 - 40, (y0 + y1) / 2)
    assert abs(r - g) < 10 and abs(g - b) < 10, f"expected grey radiograph beside the box: {(r, g, b)}"
    edge = [pixel(x0, (y0 + y1) / 2 + d / fit) for d in range(-3, 4)]
    assert any(b > 150 and g > 150 and r < 120 for r, g, b in edge), f"cyan box edge not at x0: {edge}"
    assert sum(pixel(width / 2, height / 2)) > 60, "the radiograph is not visible"
    if top - box["y"] > 4:  # letterbox above a wide picture stays black
        assert shot.getpixel((shot.width // 2, 1)) == (0, 0, 0)

    # The wheel zooms about the cursor: the image point under it stays put.
    px, py = left + 150 * fit, top + 120 * fit
    page.mouse.move(px, py)
    page.mouse.wheel(0, -300)
    expect(status).not_to_contain_text(f"Zoom {round(fit * dpr * 100)}%")
    percent = zoom_percent(viewer)
    zoom = percent / 100 / dpr  # CSS px per image px, to the status line's rounding
    assert zoom > fit * 1.2

    viewer.get_by_role("button", name="Measure", exact=True).click()
    span = 150
    page.mouse.move(px, py)
    page.mouse.down()
    page.mouse.move(px + span / 2, py, steps=4)
    page.mouse.move(px + span, py, steps=4)
    page.mouse.up()
    (m,) = wait_returned(page, lambda v: len(v["measurements"]) == 1)["measurements"]
    assert m["x0"] == pytest.approx(150, abs=0.5) and m["y0"] == pytest.approx(120, abs=0.5)
    assert m["x1"] - m["x0"] == pytest.approx(span / zoom, rel=0.5 / percent + 0.005) and m[
        "y1"
    ] == pytest.approx(m["y0"], abs=0.01)
    assert m["unit"] == "mm" and m["length"] == pytest.approx((m["x1"] - m["x0"]) * SPACING_MM, abs=0.01)
    page.screenshot(path=ARTIFACTS / f"canvas-zoom-measure-dpr{dpr}.png", full_page=True)

    # 1:1 is one image pixel per device pixel, so a known screen span has an exact length.
    viewer.get_by_role("button", name="1:1", exact=True).click()
    assert zoom_percent(viewer) == 100
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(cx - 50, cy - 40)  # click, click measuring
    page.mouse.click(cx + 50, cy + 40)
    m = wait_returned(page, lambda v: len(v["measurements"]) == 2)["measurements"][1]
    assert (m["x1"] - m["x0"], m["y1"] - m["y0"]) == (
        pytest.approx(100 * dpr, abs=0.05),
        pytest.approx(80 * dpr, abs=0.05),
    )
    assert m["length"] == pytest.approx((100**2 + 80**2) ** 0.5 * dpr * SPACING_MM, abs=0.05)

    # W/L: right widens, down raises the centre; the browser previews, then the app re-renders the PNG.
    stage = viewer.locator("#stage")

    def centre_shot() -> Image.Image:
        """Grey levels of the middle of the view, which the picture covers at 1:1."""
        shot = Image.open(io.BytesIO(stage.screenshot())).convert("L")
        w, h = 80 * dpr, 60 * dpr
        return shot.crop(
            (shot.width // 2 - w, shot.height // 2 - h, shot.width // 2 + w, shot.height // 2 + h)
        )

    before = centre_shot()
    viewer.get_by_role("button", name="W/L", exact=True).click()
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 120, cy + 60, steps=6)
    preview = centre_shot()
    page.mouse.up()
    window = wait_returned(page, lambda v: v["window"] is not None)["window"]
    per_px = 255 / box["width"]
    assert window["width"] == pytest.approx(255 + 120 * per_px, abs=0.02)
    assert window["center"] == pytest.approx(127.5 + 60 * per_px, abs=0.02)
    # The preview filter goes once the picture windowed by the server is shown.
    viewer.locator('#image[style*="filter: none"]').wait_for()
    rendered = centre_shot()
    assert mean_abs_diff(preview, before) > 10, "the W/L drag did not change the picture"
    assert mean_abs_diff(preview, rendered) < 3, "the preview does not match the server's rendering"
    # The re-render keeps the view and the measurements.
    assert zoom_percent(viewer) == 100 and len(returned(page)["measurements"]) == 2
    status.get_by_text(f"W {window['width']:.0f} / C {window['center']:.0f}").wait_for()
    page.screenshot(path=ARTIFACTS / f"canvas-wl-dpr{dpr}.png", full_page=True)

    viewer.get_by_role("button", name="Clear measurements", exact=True).click()
    wait_returned(page, lambda v: v["measurements"] == [])
    page.get_by_text("Study").click()  # focus out of the viewer, then back in by clicking the picture
    page.mouse.click(cx, cy)
    page.keyboard.press("f")
    assert zoom_percent(viewer) == round(fit * dpr * 100)

    # Another study of the same size: a fresh view, and nothing returned from the previous one.
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -300)
    viewer.get_by_role("button", name="Measure", exact=True).click()
    page.mouse.click(cx - 50, cy)
    page.mouse.click(cx + 50, cy)
    wait_returned(page, lambda v: len(v["measurements"]) == 1)
    page.get_by_text("B", exact=True).click()
    page.locator('[data-testid="stCode"] code', has_text="null").wait_for()
    status.get_by_text(f"Zoom {round(fit * dpr * 100)}%").wait_for()
    assert errors == []
    context.close()
