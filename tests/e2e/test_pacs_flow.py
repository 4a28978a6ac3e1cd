"""PACS in a real Chromium against `streamlit run asgi.py` and a real Orthanc: an admin opens Import → PACS, searches,
picks the study, retrieves it and sees it imported; in the viewer "Send to PACS" sends its SEG and SR, which Orthanc
then holds."""

from __future__ import annotations

import re

import pytest
import requests

from tests.conftest import SHARED
from tests.e2e.conftest import ARTIFACTS, REPO, fresh_app_data, pick, sign_in
from tests.pacs import orthanc_server

pytestmark = pytest.mark.e2e
PASSWORD = "admin-pw-e2e"
DICOM = "nih_dx_chest_1024_nofinding_nccid.dcm"
MODEL_RUN_MS = 300_000  # the models' first run on two shared CPU cores


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if orthanc_server.binary() is None or orthanc_server.dicomweb_plugin() is None:
        pytest.skip("Orthanc or its DICOMweb plugin is not installed (Debian: orthanc, orthanc-dicomweb)")
    with orthanc_server.running(tmp_path_factory.mktemp("e2e-orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory, orthanc, shared_data):
    if not any((SHARED / "models").glob("*.pt")):
        pytest.skip("shared model weights are missing")
    orthanc.store(shared_data / "dicom" / DICOM)
    env, ctx = fresh_app_data(
        tmp_path_factory.mktemp("e2e-pacs-data"), {"boss": ("admin", PASSWORD)},
        CXR_REVIEW_MODELS_DIR=str(SHARED / "models"), CXR_REVIEW_DEVICE="cpu", CXR_REVIEW_PACS_URL=orthanc.dicomweb,
        CXR_REVIEW_PACS_USER=orthanc_server.USER, CXR_REVIEW_PACS_PASSWORD=orthanc_server.PASSWORD,
    )  # fmt: skip
    return run_streamlit(REPO / "asgi.py", env), ctx


def _idle(page, timeout: int = 60_000) -> None:
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=timeout)


def test_search_retrieve_view_and_send_to_pacs(browser, app, orthanc, record_errors):
    url, ctx = app
    page = browser.new_context(viewport={"width": 1500, "height": 1000}).new_page()
    errors = record_errors(page)
    missing: list[str] = []
    page.on("response", lambda r: r.status == 404 and missing.append(f"404 {r.url}"))
    sign_in(page, url, "boss", PASSWORD)
    page.get_by_role("link", name="Import").click()
    page.get_by_role("tab", name="PACS").click()
    page.get_by_text(f"PACS (DICOMweb): {orthanc.dicomweb}").wait_for(timeout=30_000)
    pick(page, "Modality", "DX")
    page.get_by_role("button", name="Search the PACS").click()
    page.get_by_text("Studies to retrieve").wait_for(timeout=30_000)
    _idle(page)
    page.locator("[data-testid='stDataFrame'] canvas").first.wait_for(timeout=30_000)

    page.get_by_label("Studies to retrieve").click()
    page.get_by_role("option").filter(has_text="Covid0000").click()
    page.keyboard.press("Escape")
    _idle(page)
    page.screenshot(path=ARTIFACTS / "pacs-01-search.png")
    page.get_by_role("button", name="Retrieve 1 study").click()
    page.get_by_text("The file was imported.").wait_for(timeout=60_000)
    _idle(page)
    page.screenshot(path=ARTIFACTS / "pacs-02-retrieved.png", full_page=True)
    assert page.get_by_text("1 imported · 0 duplicate · 0 rejected").count() == 1
    assert orthanc_server.PASSWORD not in page.content()

    from sqlalchemy import select

    from db import engine as dbe
    from db.models import Study

    with dbe.read(ctx.engine) as s:
        (study_id,) = s.scalars(select(Study.id)).all()  # the retrieved study, the only one
    page.goto(f"{url}/review?study={study_id}")
    send = page.get_by_role("button", name="Send to PACS")
    send.wait_for(timeout=60_000)
    _idle(page)
    send.click()
    done = page.get_by_text("Sent to the PACS at")
    done.wait_for(timeout=MODEL_RUN_MS)
    _idle(page, MODEL_RUN_MS)
    text = done.inner_text()
    page.mouse.move(700, 600)  # away from the button: its tooltip covers the row
    page.get_by_role("tooltip").wait_for(state="hidden", timeout=10_000)
    page.screenshot(path=ARTIFACTS / "pacs-03-sent.png")
    assert "1 SEG, 1 SR" in text and "AI's reading" in text and "Research use only" in text

    # Orthanc now holds the study's SEG and SR series beside the DX one.
    auth = (orthanc_server.USER, orthanc_server.PASSWORD)
    (orthanc_study,) = requests.get(f"{orthanc.root}/studies", auth=auth, timeout=30).json()
    series = requests.get(f"{orthanc.root}/studies/{orthanc_study}/series", auth=auth, timeout=30).json()
    assert sorted(s["MainDicomTags"]["Modality"] for s in series) == ["DX", "SEG", "SR"]
    # Opening /review directly makes Streamlit's frontend probe /review/_stcore/{health,host-config} before it falls
    # back to the root: those 404s are the framework's, not the app's.
    probes = [m for m in missing if re.fullmatch(r"404 http://[^/]+/review/_stcore/(health|host-config)", m)]
    assert len(probes) == len(missing), missing
    not_found = "console: Failed to load resource: the server responded with a status of 404 (Not Found)"
    assert [e for e in errors if e != not_found] == [] and errors.count(not_found) <= len(probes), errors
