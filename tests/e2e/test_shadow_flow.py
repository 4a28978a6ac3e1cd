"""Shadow mode in a real Chromium against `streamlit run asgi.py`: a researcher opens a study with the AI on, turns
on both shadow switches and sees a classifier candidate's scores and an anatomy candidate's outlines beside the
active versions, each labelled CANDIDATE with its sha256 and "Research use only"; a radiologist on the same study
has neither switch."""

from __future__ import annotations

import re

import pytest

from tests.conftest import SHARED
from tests.e2e.conftest import ARTIFACTS, REPO, VIEWER, WORKLIST_TABLE, fresh_app_data, sign_in
from tests.screens.test_shadow_mode import CANDIDATE, SEG_CANDIDATE, models_with_candidates

pytestmark = pytest.mark.e2e
PASSWORD = "shadow-password-1"
DICOM = "siim_cr_chest_pa_1024_jpeg_mono2.dcm"
MODEL_RUN_MS = 300_000


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory, shared_data):
    from services import importer

    if not any((SHARED / "models").glob("*.pt")):
        pytest.skip("shared model weights are missing")
    folder = tmp_path_factory.mktemp("e2e-shadow")
    env, ctx = fresh_app_data(folder / "data", {"res": ("researcher", PASSWORD), "rad": ("radiologist", PASSWORD)},
                              CXR_REVIEW_MODELS_DIR=str(models_with_candidates(folder)), CXR_REVIEW_DEVICE="cpu")  # fmt: skip
    (result,) = importer.import_paths(ctx.engine, ctx.store, [shared_data / "dicom" / DICOM], max_bytes=2**30)
    assert result.study_id is not None, result
    return run_streamlit(REPO / "asgi.py", env)


def _open_with_ai(page, url: str, who: str) -> None:
    sign_in(page, url, who, PASSWORD)
    page.get_by_text("1 study ·").wait_for(timeout=60_000)
    box = page.locator(WORKLIST_TABLE).first.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 38 + 17)  # the first row
    page.locator(VIEWER).first.locator("canvas").first.wait_for(timeout=60_000)
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=MODEL_RUN_MS)
    if not page.get_by_role("switch", name="AI overlays").is_checked():
        page.locator("label").filter(has_text="AI overlays").first.click()
    page.get_by_text("AI findings · Research use only").wait_for(timeout=MODEL_RUN_MS)
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=MODEL_RUN_MS)


def test_a_researcher_sees_both_candidates_and_a_radiologist_sees_neither(browser, app, record_errors):
    page = browser.new_context(viewport={"width": 1600, "height": 1400}).new_page()
    errors = record_errors(page)
    _open_with_ai(page, app, "res")
    page.locator("label").filter(has_text="Shadow mode: a candidate's scores").click()
    page.get_by_text(f"CANDIDATE (candidate) {CANDIDATE}").wait_for(timeout=MODEL_RUN_MS)
    page.locator("label").filter(has_text="Shadow mode: a candidate's anatomy").click()
    page.get_by_text(f"CANDIDATE (candidate) {SEG_CANDIDATE}").wait_for(timeout=MODEL_RUN_MS)
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=MODEL_RUN_MS)
    note = page.get_by_text(f"CANDIDATE (candidate) {SEG_CANDIDATE}")
    assert "Research use only" in note.inner_text() and "sha256" in note.inner_text()
    # both outlines are drawn, each captioned with its model (st.image), and the two shadow tables are there
    page.get_by_text(f"Candidate {SEG_CANDIDATE}", exact=True).wait_for(timeout=30_000)
    assert page.get_by_text(re.compile(r"^Active anatomy_unet_smp")).count() == 1
    assert page.locator("[data-testid='stImage'] img").count() >= 2
    note.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "shadow-01-researcher.png")
    assert "Traceback" not in page.content() and errors == []

    page = browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()
    errors = record_errors(page)
    _open_with_ai(page, app, "rad")
    assert page.get_by_text("Shadow mode").count() == 0 and "CANDIDATE" not in page.content()
    page.screenshot(path=ARTIFACTS / "shadow-02-radiologist.png")
    assert errors == []
