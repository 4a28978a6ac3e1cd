"""A researcher in a real Chromium against `streamlit run asgi.py`, with an evaluation set of 8 shared NIH images
and a finished run of the classifier on it (made before the server starts): opens the Failure cases page, reads
the false-negative gallery of the finding with the most false negatives (tiles with heatmaps), opens the similar
cases of a tile, ticks it and sends the group to an annotator; the labelling task exists with that image."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import SHARED, finished_run, nih_subset_csv
from tests.e2e.conftest import ARTIFACTS, REPO, fresh_app_data, pick, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "researcher-password-1"
MODEL = "cxr15_mobilenetv3@1.0.0"
N = 8


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory):
    from inference.registry import Registry
    from inference.runner import Runner
    from services import eval_metrics, eval_sets, failure_cases, threshold_sets

    nih = SHARED / "data" / "nih"
    if not nih.is_dir():
        pytest.skip(f"shared data not found at {nih}")
    folder = tmp_path_factory.mktemp("failures-e2e")
    env, ctx = fresh_app_data(folder / "data", {"res": ("researcher", PASSWORD), "ann": ("annotator", PASSWORD)},
                              CXR_REVIEW_DATASET_ROOTS=os.pathsep.join([str(nih), str(folder)]),
                              CXR_REVIEW_MODELS_DIR=str(SHARED / "models"))  # fmt: skip
    subset = nih_subset_csv(nih, N, folder / "subset.csv")
    runner = Runner(Registry(ctx.settings.models_dir), "cpu")
    info = eval_sets.from_folder(ctx, "nih-8", nih / "images", subset, 1).info
    finished_run(ctx, runner, info.id, MODEL)
    sc = eval_metrics.scored(ctx, runner.registry, info.id, MODEL)
    force = threshold_sets.in_force(ctx, sc.spec).thresholds
    fn = {f: failure_cases.false_negatives(failure_cases.cases(sc, f), force[f]) for f in sc.findings}
    finding = max((f for f in sc.findings if f != "No Finding"), key=lambda f: len(fn[f]))
    assert fn[finding], "the chosen images give no false negative"
    # three other images of the set are in the database already: the similar cases there are not empty
    others = [it for it in sc.items if it.id not in {c.item.id for c in fn[finding]}][-3:]
    failure_cases.stored_image_ids(ctx, info, others, 1)
    return run_streamlit(REPO / "asgi.py", env), ctx, finding, fn[finding]


def _idle(page):
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=60_000)


def test_a_researcher_reads_the_false_negatives_opens_similar_cases_and_sends_a_group(browser, app, record_errors):
    from db import annotations as db_annotations
    from db import engine as dbe
    from db.models import Image
    from services import labelling

    url, ctx, finding, fns = app
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    errors = record_errors(page)
    sign_in(page, url, "res", PASSWORD)
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    page.get_by_role("link", name="Failure cases").click()
    page.get_by_role("heading", name="Failure cases", exact=True).wait_for(timeout=30_000)
    page.get_by_text("Research use only").first.wait_for(timeout=30_000)
    _idle(page)
    pick(page, "Finding", finding)
    first = fns[0].name
    page.get_by_text(f"{len(fns)} false negative(s) of").first.wait_for(timeout=30_000)
    page.get_by_text(first, exact=True).first.wait_for(timeout=60_000)
    page.locator('[data-testid="stImage"] img').first.wait_for(timeout=60_000)
    _idle(page)
    assert page.locator('[data-testid="stImage"] img').count() == min(len(fns), 12)
    page.screenshot(path=ARTIFACTS / "failures-01-fn-gallery.png", full_page=True)

    page.get_by_role("button", name="Similar cases").first.click()
    page.get_by_role("heading", name=f"Similar cases of {first}").wait_for(timeout=60_000)
    page.get_by_text("In the whole database").wait_for(timeout=30_000)
    _idle(page)
    page.locator('[data-testid="stDataFrame"]').nth(1).wait_for(timeout=30_000)  # neighbours in the set and in the database
    assert page.get_by_text("No other readable image here.").count() == 0
    page.get_by_role("heading", name=f"Similar cases of {first}").scroll_into_view_if_needed()
    assert page.get_by_text("weights sha256").count() >= 2
    page.screenshot(path=ARTIFACTS / "failures-02-similar.png", full_page=True)

    page.get_by_text("Select", exact=True).first.click()
    page.get_by_text("Group: 1 image", exact=True).wait_for(timeout=30_000)
    _idle(page)
    page.get_by_label("Task name").fill("fn-review")
    pick(page, "Readers", "ann (annotator)")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Send to annotators").click()
    page.get_by_text("Task fn-review made: 1 image, readers ann.").wait_for(timeout=60_000)
    _idle(page)
    page.get_by_text("Task fn-review made: 1 image, readers ann.").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "failures-03-sent.png", full_page=True)

    page.get_by_role("tab", name="Likely label errors").click()
    page.get_by_text("likely label error(s): labelled positive with a score at or below").wait_for(timeout=30_000)
    _idle(page)
    page.screenshot(path=ARTIFACTS / "failures-04-label-errors.png", full_page=True)

    # The embedding map: a k-means cluster of the map is a group, with its metrics beside the whole set's, and
    # goes to annotators like a gallery's group.
    page.get_by_role("tab", name="Embedding map").click()
    page.get_by_text("Research use only").first.wait_for(timeout=30_000)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=240_000)  # first UMAP compiles numba
    _idle(page)
    page.get_by_text("A cluster", exact=True).click()
    page.get_by_text(re.compile(r"^The \d+ selected image\(s\)$")).wait_for(timeout=60_000)
    _idle(page)
    group = int(re.search(r"Group: (\d+) image", page.get_by_text(re.compile(r"^Group: \d+ image")).first.inner_text()).group(1))
    page.get_by_label("Task name").fill("map-cluster")
    pick(page, "Readers", "ann (annotator)")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Send to annotators").click()
    page.get_by_text(re.compile(r"^Task map-cluster made: \d+ image")).wait_for(timeout=60_000)
    _idle(page)
    page.screenshot(path=ARTIFACTS / "failures-05-map-cluster.png", full_page=True)
    with dbe.read(ctx.engine) as s:
        assert len(db_annotations.task_images(s, labelling.get(ctx, "map-cluster").id)) == group >= 1

    task = labelling.get(ctx, "fn-review")
    assert task.readers == {"ann": False} and task.findings == (finding,)
    with dbe.read(ctx.engine) as s:
        [image_id] = db_annotations.task_images(s, task.id)
        assert s.get(Image, image_id).pixel_sha256 == fns[0].item.pixel_sha256
    assert errors == [], errors
