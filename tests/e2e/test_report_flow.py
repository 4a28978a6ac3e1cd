"""The report in a real Chromium: accept a finding and the draft follows at once; write a sentence that negates a
finding the AI scores positive, save, and the consistency check flags it; its button shows that finding's heatmap
in the viewer, as do the links of the draft's sentences; acknowledge it with a note and sign: the report is final and locked."""

from __future__ import annotations

import json

import pytest

from db import accounts, repo, report_versions
from db import engine as dbe
from db.models import ReportStatus
from tests.conftest import SHARED
from tests.e2e.conftest import ARTIFACTS, REPO, fresh_app_data
from tests.e2e.test_ai_flow import PASSWORD, _ai_on, _settle, _sign_in_and_open_the_study, _wait_focused

pytestmark = pytest.mark.e2e
DICOM = "siim_cr_chest_pa_1024_jpeg_mono2.dcm"  # the AI scores Atelectasis (top) and Effusion positive
WORDS = "FINDINGS: Atelectasis at the left base. No pleural effusion.\nIMPRESSION: Left basal atelectasis."


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory, shared_data):
    from services import importer

    if not any((SHARED / "models").glob("*.pt")):
        pytest.skip("shared model weights are missing")
    env, ctx = fresh_app_data(
        tmp_path_factory.mktemp("e2e-report-data"), {"rad": ("radiologist", PASSWORD)},
        CXR_REVIEW_MODELS_DIR=str(SHARED / "models"), CXR_REVIEW_DEVICE="cpu",
    )  # fmt: skip
    (result,) = importer.import_paths(ctx.engine, ctx.store, [shared_data / "dicom" / DICOM], max_bytes=2**30)
    return run_streamlit(REPO / "asgi.py", env), ctx, result.study_id


def _wait_value(page, label: str, part: str, timeout_ms: int = 30_000) -> str:
    value = ""
    for _ in range(timeout_ms // 250):
        value = page.get_by_label(label).input_value()
        if part in value:
            return value
        page.wait_for_timeout(250)
    raise AssertionError(f"{label!r} never showed {part!r}; it reads {value!r}")


def test_draft_follows_a_flag_shows_its_overlay_is_acknowledged_and_the_report_signed(browser, app, record_errors):
    url, ctx, study_id = app
    page = browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()
    errors = record_errors(page)
    _sign_in_and_open_the_study(page, url)
    _ai_on(page)
    draft = "Draft report"
    assert "No AI statement accepted yet." in page.get_by_label(draft).input_value()

    # Accept the focused finding (Atelectasis) with the keyboard: the draft shows it without a reload
    _wait_focused(page, "Atelectasis", "your verdict: none yet")
    page.keyboard.press("a")
    _wait_focused(page, "your verdict: none yet")  # the focus moved on
    _wait_value(page, draft, "Atelectasis.")
    page.get_by_text("Follows the verdicts").wait_for(timeout=30_000)

    # The draft's sentence links to its overlay: a click shows the Atelectasis heatmap in the viewer
    with dbe.read(ctx.engine) as s:
        image_id = repo.study_images(s, study_id)[0].id
    heatmap = page.locator(f".st-key-ai_cam_{image_id}")
    assert heatmap.get_by_label("Finding heatmap").input_value() == "(none)"
    link = page.locator(".st-key-report_link_0")
    assert "Atelectasis." in link.inner_text()
    link.get_by_role("button", name="Atelectasis").click()
    _settle(page, 1000)
    assert heatmap.get_by_label("Finding heatmap").input_value().startswith("Atelectasis")
    assert page.get_by_text("Heatmap opacity").count() == 1
    link.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "report-00-sentence-link.png")

    # Write a sentence negating a finding the AI scores positive, save: a flag
    editor = page.get_by_label(draft)
    editor.fill(WORDS)
    editor.press("Control+Enter")
    page.get_by_text("Edited by hand").wait_for(timeout=30_000)
    page.get_by_role("button", name="Save report").click()
    page.get_by_text("1 flag, 1 not acknowledged").wait_for(timeout=30_000)
    flag = page.locator(".st-key-report_flag_Effusion_negated_but_ai_positive")
    assert "No pleural effusion." in flag.inner_text() and "negates" in flag.inner_text()
    _settle(page, 500)
    flag.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "report-01-flag.png")

    # Its button shows the finding's heatmap in the viewer
    flag.get_by_role("button", name="Show overlay").click()
    _settle(page, 1000)
    assert heatmap.get_by_label("Finding heatmap").input_value().startswith("Effusion")
    assert page.get_by_text("Heatmap opacity").count() == 1
    page.locator("[data-testid='stMain']").evaluate("e => e.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / "report-02-overlay.png")

    # Acknowledge with a note, then sign: no question (nothing unacknowledged), final and locked
    flag.get_by_text("Acknowledge").click()
    _settle(page, 300)
    note = flag.get_by_placeholder("Note (optional)")
    note.fill("small; clinically irrelevant")
    note.press("Enter")
    _settle(page, 300)
    page.get_by_role("button", name="Sign report").click()
    page.get_by_text("Signed by rad").wait_for(timeout=30_000)
    signed = page.get_by_label("Signed report (final, locked)")
    assert signed.is_disabled() and signed.input_value() == WORDS
    assert page.get_by_role("button", name="Save report").count() == 0
    assert "Research use only" in page.content()
    _settle(page, 500)
    signed.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "report-03-signed.png")

    with dbe.read(ctx.engine) as s:
        rad = accounts.get_user_by_name(s, "rad").id
        line = report_versions.versions(s, study_id, rad)
    assert [v.status for v in line] == [ReportStatus.draft, ReportStatus.final]
    (f,) = json.loads(line[-1].consistency)["flags"]
    assert (f["finding"], f["acknowledged"], f["note"]) == ("Effusion", True, "small; clinically irrelevant")
    assert line[-1].signed_by_id == rad and line[-1].text == WORDS
    assert not [e for e in errors if "Traceback" in e or "pageerror" in e], errors
    assert "Traceback" not in page.content()
