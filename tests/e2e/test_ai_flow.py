"""The AI part of a review in a real Chromium against `streamlit run asgi.py`: switch the AI on, show every overlay
(anatomy, bone-suppressed image, Grad-CAM heatmap with boxes, cardiothoracic ratio), accept one finding with
the keyboard and reject another with the button, reload (still signed in) and find the verdicts still there."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from db import accounts, repo
from db import engine as dbe
from db.models import Prediction, PredictionItem
from inference.registry import Registry
from services import threshold_sets
from tests.conftest import SHARED
from tests.e2e.conftest import ARTIFACTS, REPO, VIEWER, WORKLIST_TABLE, fresh_app_data, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "radiologist-pw"
DICOM = "nih_dx_chest_1024_nofinding_nccid.dcm"
MODEL_RUN_MS = 300_000  # three models and 14 Grad-CAMs on two shared CPU cores, first time only


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory, shared_data):
    from services import importer

    if not any((SHARED / "models").glob("*.pt")):
        pytest.skip("shared model weights are missing")
    env, ctx = fresh_app_data(
        tmp_path_factory.mktemp("e2e-ai-data"), {"rad": ("radiologist", PASSWORD), "boss": ("admin", PASSWORD)},
        CXR_REVIEW_MODELS_DIR=str(SHARED / "models"), CXR_REVIEW_DEVICE="cpu",
    )  # fmt: skip
    (result,) = importer.import_paths(ctx.engine, ctx.store, [shared_data / "dicom" / DICOM], max_bytes=2**30)
    assert result.study_id is not None
    return run_streamlit(REPO / "asgi.py", env), ctx, result.study_id


def _shot(page, name: str, top: bool = False) -> None:
    if top:
        page.locator("[data-testid='stMain']").evaluate("e => e.scrollTo(0, 0)")
        page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / f"ai-{name}.png")


def _viewer_pixels(page, index: int = 0) -> np.ndarray:
    viewer = page.locator(VIEWER).nth(index)
    shot = viewer.locator("canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.float32)


def _settle(page, ms: int = 1500) -> None:
    """Wait for the app to finish its rerun (the status widget disappears), then a moment for the viewers to draw."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=MODEL_RUN_MS)
    page.wait_for_timeout(ms)


def _sign_in(page, url: str, username: str = "rad") -> None:
    sign_in(page, url, username, PASSWORD)


def _sign_in_and_open_the_study(page, url: str) -> None:
    _sign_in(page, url)
    _open_the_study(page)


def _open_the_study(page) -> None:
    page.get_by_text("1 study ·").wait_for(timeout=60_000)
    grid = page.locator(WORKLIST_TABLE).first
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 38 + 17)  # the first row
    page.get_by_role("button", name="Mark reviewed").wait_for(timeout=60_000)
    page.locator(VIEWER).first.locator("canvas").first.wait_for(
        timeout=60_000
    )


def _ai_on(page) -> None:
    """Switch the AI on, unless it already is: the switch stays as the reader left it in an earlier session."""
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=MODEL_RUN_MS)
    if not page.get_by_role("switch", name="AI overlays").is_checked():
        page.locator("label").filter(has_text="AI overlays").first.click()
    page.get_by_text("AI findings · Research use only").wait_for(timeout=MODEL_RUN_MS)
    _settle(page)


def _focused(page) -> str:
    return page.locator(".st-key-quick_verdict [data-testid='stMarkdownContainer']").first.inner_text()


def _wait_focused(page, *parts: str, timeout_ms: int = 30_000) -> str:
    text = ""
    for _ in range(timeout_ms // 250):
        text = _focused(page)
        if all(p in text for p in parts):
            return text
        page.wait_for_timeout(250)
    raise AssertionError(f"focused statement never showed {parts}; it reads {text!r}")


def test_ai_overlays_keyboard_verdicts_survive_a_reload(browser, app, record_errors):
    url, ctx, study_id = app
    page = browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()
    errors = record_errors(page)
    missing: list[str] = []
    page.on("response", lambda r: r.status >= 400 and missing.append(f"{r.status} {r.url}"))
    _sign_in_and_open_the_study(page, url)
    plain = _viewer_pixels(page)

    _ai_on(page)
    assert page.get_by_text("Research use only").first.is_visible()
    _shot(page, "01-ai-on")

    # Anatomy: coloured outlines appear on the grey radiograph.
    page.locator("label").filter(has_text="Anatomy (lungs, heart, clavicles)").click()
    _settle(page)
    anatomy = _viewer_pixels(page)
    colour = lambda a: float(np.abs(a[..., 0] - a[..., 2]).mean())  # noqa: E731  grey has R == B
    assert colour(anatomy) > colour(plain) + 1.0, (colour(plain), colour(anatomy))
    # Cardiothoracic ratio: the value and its two measurement lines.
    page.locator("label").filter(has_text="Cardiothoracic ratio").click()
    page.get_by_text("CTR").filter(has_text="0.").first.wait_for(timeout=30_000)
    _settle(page)
    _shot(page, "02-anatomy-ctr", top=True)

    # Bone suppression side by side: a second viewer with the soft-tissue image.
    page.locator("label").filter(has_text="side by side").click()
    page.get_by_text("Bone-suppressed (soft-tissue) image").wait_for(timeout=30_000)
    _settle(page, 2500)
    assert page.locator(VIEWER).count() == 2
    soft = _viewer_pixels(page, 1)
    assert soft.std() > 10  # a picture, not a blank frame
    _shot(page, "03-bone-side-by-side", top=True)
    page.locator("label").filter(has_text="overlay").filter(has_not_text="AI").first.click()
    _settle(page)

    # Grad-CAM heatmap with its boxes, of the highest-ranked finding that has boxes.
    with dbe.read(ctx.engine) as s:
        image = repo.study_images(s, study_id)[0]
        stored = [json.loads(p.result) for p in s.scalars(select(Prediction).where(
            Prediction.pixel_sha256 == image.pixel_sha256, Prediction.task == "classification"))]  # fmt: skip
    (findings,) = stored
    ranked = sorted(findings["probabilities"], key=lambda k: -findings["probabilities"][k])
    label = next(k for k in ranked if findings["boxes"].get(k))
    before = _viewer_pixels(page)
    heatmap = page.locator("[data-testid='stSelectbox']").filter(has_text="Finding heatmap")
    heatmap.scroll_into_view_if_needed()
    heatmap.get_by_role("button", name="Open").click()
    page.get_by_role("option", name=re.compile(f"^{re.escape(label)} ·")).click()
    page.get_by_text("Grad-CAM clipped to the lungs").wait_for(timeout=30_000)
    _settle(page, 2500)
    heat = _viewer_pixels(page)
    _shot(page, "04-heatmap-boxes", top=True)
    changed = np.abs(heat - before).max(axis=2) > 12
    assert changed.mean() > 0.005, changed.mean()  # the heatmap colours part of the lungs, the box its edges

    # Verdicts: A (keyboard) accepts the focused statement, the focus moves on, the button rejects the next.
    first = _focused(page).split(" · ")[0].strip()
    assert "your verdict: none yet" in _focused(page)
    page.keyboard.press("a")
    _settle(page)
    text = _wait_focused(page, "2 of")
    second = text.split(" · ")[0].strip()
    assert second != first
    # Keys typed into a text field are text, not verdicts.
    page.get_by_text("DICOM header").click()
    page.get_by_placeholder("keyword or tag").fill("x")
    page.get_by_placeholder("keyword or tag").press("u")
    _settle(page)
    assert "your verdict: none yet" in _wait_focused(page, second)
    page.get_by_role("button", name="Reject").click()
    _settle(page)
    _wait_focused(page, "3 of")
    page.keyboard.press("k")  # back to the rejected statement
    _wait_focused(page, second, "your verdict: reject")
    page.keyboard.press("k")
    _wait_focused(page, first, "your verdict: accept")
    page.get_by_text("Your verdicts").scroll_into_view_if_needed()
    _settle(page)
    _shot(page, "05-verdicts")

    with dbe.read(ctx.engine) as s:
        image_id = repo.study_images(s, study_id)[0].id
        reader = accounts.get_user_by_name(s, "rad").id
        mine = repo.verdicts_of(s, image_id, reader)
        saved = {(v.item_key, v.decision.value) for v in mine}
        # each points at the stored AI statement it judges
        judged = {v.item_key: getattr(s.get(PredictionItem, v.prediction_item_id or 0), "key", None) for v in mine}
    assert saved == {(first, "accept"), (second, "reject")}
    assert judged == {first: first, second: second}

    # A reload keeps the reader signed in (the session cookie) and the open study (it is in the URL); open it
    # again from the worklist: the verdicts are still there.
    assert f"study={study_id}" in page.url
    page.reload()
    page.get_by_text("rad · radiologist").wait_for(timeout=60_000)
    assert page.get_by_role("button", name="Sign in").count() == 0
    page.get_by_role("button", name="Next study").wait_for(timeout=60_000)  # the viewer, on that study
    assert page.get_by_text("Open a study from the worklist").count() == 0
    page.locator("[data-testid='stSidebar']").get_by_role("link", name="Worklist").click()
    _open_the_study(page)
    assert page.get_by_role("switch", name="AI overlays").is_checked()  # as rad left it before the reload
    _ai_on(page)  # stored results: no model runs again
    assert page.get_by_text("AI results ready").count() == 0
    _wait_focused(page, first, "your verdict: accept")
    page.keyboard.press("j")
    _wait_focused(page, second, "your verdict: reject")
    report = page.get_by_label("Draft report").input_value()
    assert "Research use only" in page.content() and report.strip()
    _shot(page, "06-after-reload")

    # With the focus on the picture, the viewer keeps the keys it uses (M: measure) and the page's shortcuts get the
    # others. N goes to the next study; there is none, and the app says so.
    viewer = page.locator(VIEWER).first
    viewer.locator("#overlay").click()
    page.keyboard.press("m")
    assert viewer.get_by_role("button", name="Measure", exact=True).get_attribute("aria-pressed") == "true"
    page.keyboard.press("p")
    page.keyboard.press("n")
    page.get_by_text("No more studies in the worklist in that direction.").wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    # A reload at /review makes Streamlit's frontend probe /review/_stcore/{health,host-config} before it falls
    # back to the root: those two 404s are the framework's, not the app's.
    probes = [m for m in missing if re.fullmatch(r"404 http://[^/]+/review/_stcore/(health|host-config)", m)]
    assert len(probes) == len(missing), missing
    not_found = "console: Failed to load resource: the server responded with a status of 404 (Not Found)"
    assert [e for e in errors if e != not_found] == [] and errors.count(not_found) <= len(probes), errors


def test_the_admin_models_page_lists_versions_and_sets_a_threshold(browser, app, record_errors):
    url, ctx, _ = app
    default = Registry(ctx.settings.models_dir).for_task("classification").ref  # the thresholds tab edits it
    page = browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()
    errors = record_errors(page)
    _sign_in(page, url, "boss")
    page.get_by_role("link", name="Models").click()
    page.get_by_role("heading", name="Models").wait_for(timeout=60_000)
    page.get_by_text("Research use only").first.wait_for()
    _settle(page)
    _shot(page, "07-models-catalogue")

    page.get_by_role("tab", name="Active versions").click()
    page.get_by_text("Finding classification").first.wait_for()
    _shot(page, "08-models-active")

    page.get_by_role("tab", name="Thresholds").click()
    field = page.get_by_role("spinbutton", name="Cardiomegaly")
    field.fill("0.25")
    page.get_by_role("button", name="Save thresholds").click()
    page.get_by_text(f"Saved 1 threshold of {default}.").wait_for(timeout=30_000)
    _settle(page)
    _shot(page, "09-models-thresholds")
    # The edit is saved as a threshold set and put in force (the viewer and infer read it from there).
    spec = Registry(ctx.settings.models_dir).resolve(default)
    force = threshold_sets.in_force(ctx, spec)
    assert force.thresholds == {**spec.thresholds, "Cardiomegaly": 0.25}
    assert force.source == f"{default} edits v1"
    assert "Traceback" not in page.content()
    assert errors == []
