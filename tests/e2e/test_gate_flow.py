"""The quality gate in a real Chromium against `streamlit run asgi.py`: a lateral film (one the gate did not train
on) shows the gate's reason and no finding scores, heatmaps or CTR; the reader overrides it with a reason, which
is stored and audited, and the AI output then shows with a note that the gate was overridden."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from db import audit
from db import engine as dbe
from db.models import GateOverride
from services import gate_training
from tests.conftest import SHARED
from tests.e2e.conftest import ARTIFACTS, REPO, VIEWER, WORKLIST_TABLE, fresh_app_data, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "radiologist-pw"
MODEL_RUN_MS = 300_000  # every model and 14 Grad-CAMs on two shared CPU cores, after the override
REASON = "Checked by eye: readable enough for a research look"


def _held_out_lateral(shared_data):
    return gate_training.held_out_paths(shared_data, "lateral (covid_followup)")[0]


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory, shared_data):
    from services import importer

    if not any((SHARED / "models").glob("*.pt")):
        pytest.skip("shared model weights are missing")
    env, ctx = fresh_app_data(
        tmp_path_factory.mktemp("e2e-gate-data"), {"rad": ("radiologist", PASSWORD)},
        CXR_REVIEW_MODELS_DIR=str(SHARED / "models"), CXR_REVIEW_DEVICE="cpu",
    )  # fmt: skip
    (result,) = importer.import_paths(
        ctx.engine, ctx.store, [_held_out_lateral(shared_data)], max_bytes=2**30
    )
    assert result.study_id is not None
    return run_streamlit(REPO / "asgi.py", env), ctx


def _idle(page, timeout: int = MODEL_RUN_MS) -> None:
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=timeout)
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=timeout)


def test_a_lateral_film_is_refused_with_the_reason_and_the_override_is_recorded(browser, app, record_errors):
    url, ctx = app
    page = browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()
    errors = record_errors(page)
    sign_in(page, url, "rad", PASSWORD)
    page.get_by_text("1 study ·").wait_for(timeout=60_000)
    grid = page.locator(WORKLIST_TABLE).first
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 38 + 17)  # the first row
    page.locator(VIEWER).first.locator("canvas").first.wait_for(timeout=60_000)
    _idle(page)
    if not page.get_by_role("switch", name="AI overlays").is_checked():
        page.locator("label").filter(has_text="AI overlays").first.click()

    refused = page.locator(".st-key-quality_gate_refused")
    refused.wait_for(timeout=MODEL_RUN_MS)
    _idle(page)
    text = refused.inner_text()
    assert "Quality gate: the AI does not read this image" in text and "lateral view" in text
    assert "quality_gate 1.0.0" in text  # the gate model that said so
    # No AI output: no finding scores or heatmap choice, no anatomy, CTR or bone-suppression controls.
    for absent in ("Finding heatmap", "Anatomy (lungs, heart, clavicles)", "Cardiothoracic ratio",
                   "Bone-suppressed image"):  # fmt: skip
        assert page.get_by_text(absent).count() == 0, absent
    assert page.get_by_text("Research use only").first.is_visible()
    button = page.get_by_role("button", name="Override the quality gate")
    assert button.is_disabled()  # a reason is required
    refused.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "gate-01-lateral-refused.png")

    page.get_by_label("Reason to override (recorded with your name)").fill(REASON)
    page.get_by_label("Reason to override (recorded with your name)").press("Enter")
    _idle(page)
    button.click()
    page.get_by_text("Quality gate overridden").wait_for(timeout=MODEL_RUN_MS)
    page.get_by_text("Finding heatmap").wait_for(timeout=MODEL_RUN_MS)
    _idle(page)
    assert page.get_by_text(REASON).first.is_visible()
    page.get_by_text("Quality gate overridden").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "gate-02-overridden.png")

    with dbe.read(ctx.engine) as s:
        (row,) = s.scalars(select(GateOverride)).all()
        assert row.reason == REASON and row.model_id == "quality_gate"
        assert "lateral" in json.loads(row.gate_reasons)[0]
        (event,) = audit.events(s, actions=("gate_overridden",))
        assert event.actor == "rad"
    assert not errors, errors
