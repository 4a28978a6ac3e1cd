"""A researcher in a real Chromium against `streamlit run asgi.py`: makes an evaluation set from the shared NIH
images (a 12-image subset of labels.csv, plus one row whose image is missing), runs the classifier on it with
the progress shown, reads the ROC page, reloads the page (the finished run is still there), and saves a threshold
set at a target sensitivity of 0.9."""

from __future__ import annotations

import csv
import os
import re

import pytest

from tests.conftest import SHARED
from tests.e2e.conftest import ARTIFACTS, REPO, fresh_app_data, pick, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "researcher-password-1"
MODEL = "cxr15_mobilenetv3@1.0.0"
N = 12


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory):
    nih = SHARED / "data" / "nih"
    if not nih.is_dir():
        pytest.skip(f"shared data not found at {nih}")
    folder = tmp_path_factory.mktemp("evaluation-e2e")
    env, ctx = fresh_app_data(folder / "data", {"res": ("researcher", PASSWORD)},
                              CXR_REVIEW_DATASET_ROOTS=os.pathsep.join([str(nih), str(folder)]))  # fmt: skip
    with open(nih / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for _, r in zip(range(N), reader, strict=False)]
    subset = folder / "subset.csv"
    with open(subset, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + [rows[0] | {"Image Index": "missing.png"}])
    return run_streamlit(REPO / "asgi.py", env), ctx, nih / "images", subset


def _idle(page):
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=60_000)


def test_a_researcher_makes_a_set_runs_a_model_reads_the_roc_and_saves_a_threshold_set(browser, app, record_errors):
    from services import threshold_sets

    url, ctx, images, subset = app
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    errors = record_errors(page)
    missing: list[str] = []
    page.on("response", lambda r: r.status >= 400 and missing.append(f"{r.status} {r.url}"))
    sign_in(page, url, "res", PASSWORD)
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    page.get_by_role("link", name="Evaluation").click()
    page.get_by_role("heading", name="Evaluation", exact=True).wait_for(timeout=30_000)
    page.get_by_text("No evaluation set yet").wait_for(timeout=30_000)

    page.get_by_label("Set name").fill("nih-subset")
    page.get_by_label("Image folder (on the server)").fill(str(images))
    page.get_by_label("Labels CSV (on the server; NIH style: Image Index, Finding Labels)").fill(str(subset))
    page.get_by_label("Labels CSV (on the server; NIH style: Image Index, Finding Labels)").press("Enter")
    _idle(page)
    page.get_by_role("button", name="Create set").click()
    page.get_by_text(f"New version: nih-subset v1 ({N} images, truth: labels CSV); 1 row(s) left out").wait_for(
        timeout=60_000
    )
    page.get_by_text("1 row(s) left out when the set was made").click()
    page.get_by_text("No run on this set yet.").wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "evaluation-01-set-made.png", full_page=True)

    page.get_by_label("Model versions").click()
    page.get_by_role("option", name=MODEL, exact=True).click()
    page.keyboard.press("Escape")
    _idle(page)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text(f"Started: {MODEL} on nih-subset v1.").wait_for(timeout=30_000)
    page.get_by_text(f"{MODEL} · running").or_(page.get_by_text(f"{MODEL} · queued")).first.wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "evaluation-02-running.png", full_page=True)
    page.get_by_text(f"{MODEL} · done · {N}/{N}").wait_for(timeout=180_000)
    page.get_by_role("heading", name="Metrics").wait_for(timeout=60_000)
    _idle(page)
    page.screenshot(path=ARTIFACTS / "evaluation-03-summary.png", full_page=True)

    page.get_by_role("tab", name="ROC and PR").click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    _idle(page)
    page.get_by_text("AUC ", exact=False).first.wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "evaluation-04-roc.png", full_page=True)
    page.locator(".js-plotly-plot").first.screenshot(path=ARTIFACTS / "evaluation-04b-roc-chart.png")

    page.reload()  # the run is recorded in the database: a reload shows it finished, with its metrics
    page.get_by_role("heading", name="Evaluation", exact=True).wait_for(timeout=60_000)
    page.get_by_text(f"{MODEL} · done · {N}/{N}").wait_for(timeout=60_000)

    page.get_by_role("link", name="Threshold sets").click()
    page.get_by_role("heading", name="Threshold sets", exact=True).wait_for(timeout=30_000)
    page.get_by_role("heading", name="Choose on an evaluation set").wait_for(timeout=30_000)
    pick(page, "Rule", "target sensitivity")
    page.get_by_role("spinbutton", name="Target").wait_for(timeout=30_000)
    assert page.get_by_role("spinbutton", name="Target").input_value() == "0.90"
    page.get_by_label("Threshold set name").fill("screening-0.9")
    page.get_by_role("button", name="Save threshold set").click()
    page.get_by_text(f"Saved screening-0.9 v1 of {MODEL}").wait_for(timeout=30_000)
    _idle(page)
    page.screenshot(path=ARTIFACTS / "evaluation-05-threshold-set.png", full_page=True)

    from inference.registry import Registry

    spec = Registry(ctx.settings.models_dir).resolve(MODEL)
    [saved] = threshold_sets.sets_of(ctx, spec)
    assert (saved.rule, saved.target, saved.created_by) == ("target_sensitivity", 0.9, "res")
    # A reload at /evaluation makes Streamlit's frontend probe /evaluation/_stcore/{health,host-config} before it
    # falls back to the root: those 404s are the framework's, not the app's.
    probes = [m for m in missing if re.fullmatch(r"404 http://[^/]+/evaluation/_stcore/(health|host-config)", m)]
    assert len(probes) == len(missing), missing
    not_found = "console: Failed to load resource: the server responded with a status of 404 (Not Found)"
    assert [e for e in errors if e != not_found] == [] and errors.count(not_found) <= len(probes), errors
