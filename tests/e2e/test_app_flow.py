"""What a radiologist does, in a real Chromium against `streamlit run asgi.py`: sign in, upload DICOMs (one of
them broken), find the study in the worklist, open it, change the window, mark it reviewed, reload the page
(still signed in), sign out (a reload or a copied token does not sign back in)."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import ARTIFACTS, REPO, VIEWER, WORKLIST_TABLE, fresh_app_data

pytestmark = pytest.mark.e2e
PASSWORD = "radiologist-pw"


@pytest.fixture(scope="module")
def app_url(run_streamlit, tmp_path_factory):
    env, _ = fresh_app_data(tmp_path_factory.mktemp("e2e-data"), {"rad": ("radiologist", PASSWORD)})
    return run_streamlit(REPO / "asgi.py", env)


def _canvas_pixels(page) -> np.ndarray:
    shot = page.locator(VIEWER).locator("canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float32)


def test_sign_in_upload_worklist_view_window_review_sign_out(browser, app_url, shared_data, tmp_path, record_errors):
    page = browser.new_context(viewport={"width": 1500, "height": 1000}).new_page()
    errors = record_errors(page)
    page.goto(app_url)

    # Nothing but the sign-in form without a session.
    page.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    assert page.get_by_text("Worklist").count() == 0 and page.get_by_text("Import").count() == 0
    page.screenshot(path=ARTIFACTS / "app-01-sign-in.png")
    page.get_by_label("User name").fill("rad")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    # The first page shows only once the browser holds the session cookie: a reload at once stays signed in.
    assert "cxr_review_session" in {c["name"] for c in page.context.cookies()}
    page.reload()
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Sign in").count() == 0
    page.get_by_text("0 studies ·").wait_for()

    # Upload a real DICOM and a broken one together.
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")
    page.get_by_role("link", name="Import").click()
    # The page and the uploader state the same limit: the default 200 MB, below Streamlit's 1 GB cap.
    page.get_by_text("at most 200 MB per file").wait_for(timeout=30_000)
    instructions = page.get_by_test_id("stFileUploaderDropzoneInstructions").inner_text()
    assert "200MBperfile" in "".join(instructions.split()), instructions  # it said 1GB
    page.locator("input[type=file]").set_input_files(
        [str(shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm"), str(broken)]
    )
    page.get_by_role("button", name="Import 2 files").click()
    page.get_by_text("1 imported · 0 duplicate · 1 rejected").wait_for(timeout=60_000)
    page.get_by_text("1 of 2 files was rejected; the other one was imported. Reason below.").wait_for()
    page.screenshot(path=ARTIFACTS / "app-02-import.png", full_page=True)

    # The study is in the worklist; open it.
    page.get_by_role("link", name="Worklist").click()
    page.get_by_text("1 study ·").wait_for(timeout=30_000)
    grid = page.locator(WORKLIST_TABLE).first
    page.screenshot(path=ARTIFACTS / "app-03-worklist.png")
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 38 + 17)  # the first row

    page.get_by_role("button", name="Mark reviewed").wait_for(timeout=30_000)
    page.get_by_text("Pixel spacing 0.168 × 0.168 mm (PixelSpacing)").wait_for()
    viewer = page.locator(VIEWER)
    viewer.locator("canvas").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1500)
    before = _canvas_pixels(page)
    page.screenshot(path=ARTIFACTS / "app-04-viewer.png")

    # A narrower window (typed, as a reader would) makes the picture visibly more contrasted.
    width = page.get_by_label("Width")
    width.fill("60")
    width.press("Enter")
    page.wait_for_timeout(3000)
    after = _canvas_pixels(page)
    page.screenshot(path=ARTIFACTS / "app-05-viewer-window.png")
    assert before.shape == after.shape
    assert after.std() > before.std() * 1.2, (before.std(), after.std())

    page.get_by_role("button", name="Mark reviewed").click()
    page.get_by_text("reviewed by rad").wait_for(timeout=30_000)
    page.get_by_role("link", name="Worklist").click()
    page.get_by_text("1 study ·").wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "app-06-worklist-reviewed.png")
    # A header sorts the list on the server; the sort stays through other reruns, and a second click reverses it.
    age = page.locator(WORKLIST_TABLE).get_by_role("columnheader", name=re.compile(r"^Age"))
    age.get_by_role("button").click()
    page.locator(f"{WORKLIST_TABLE} th[aria-sort='ascending']", has_text=re.compile(r"^Age")).wait_for(timeout=30_000)
    view = page.get_by_role("textbox", name="View")
    view.fill("ZZ")  # two reruns for another reason: a filter nothing passes, then none
    view.press("Enter")
    page.get_by_text("No studies match").wait_for(timeout=30_000)
    view.fill("")
    view.press("Enter")
    page.get_by_text("1 study ·").wait_for(timeout=30_000)
    assert age.get_attribute("aria-sort") == "ascending"  # a rerun for another reason does not click again
    age.get_by_role("button").click()
    page.locator(f"{WORKLIST_TABLE} th[aria-sort='descending']", has_text=re.compile(r"^Age")).wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "app-07-worklist-sorted-by-age.png")

    # A reload keeps the reader signed in: the browser holds a random session token in a cookie.
    cookie = {c["name"]: c for c in page.context.cookies()}["cxr_review_session"]
    assert cookie["sameSite"] == "Strict" and len(cookie["value"]) >= 40
    # Set by the server as HttpOnly: no script of the page (or of a frame) can read it.
    assert cookie["httpOnly"] is True
    assert "cxr_review_session" not in page.evaluate("document.cookie")
    assert abs(cookie["expires"] - (time.time() + 12 * 3600)) < 600  # with the session, 12 hours
    page.reload()
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    page.get_by_text("1 study ·").wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Sign in").count() == 0
    page.wait_for_timeout(1000)
    again = {c["name"]: c for c in page.context.cookies()}["cxr_review_session"]
    assert again["value"] == cookie["value"] and abs(again["expires"] - cookie["expires"]) < 2  # not extended

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    page.get_by_role("link", name="Worklist").wait_for(state="detached", timeout=10_000)
    # Signed out for good: the cookie is gone and a reload (or the old token) does not sign back in.
    page.wait_for_timeout(1000)
    assert "cxr_review_session" not in {c["name"] for c in page.context.cookies()}
    page.context.add_cookies([cookie])  # a copy of the token taken before
    page.reload()
    page.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    assert page.get_by_role("link", name="Worklist").count() == 0
    assert "Traceback" not in page.content()
    assert errors == []
