"""An admin makes a labelling task with two readers in a real Chromium against `streamlit run asgi.py`: the images
chosen by a worklist filter (the count shown), two annotators read each image, and the task is in the list with
its readers' progress. Once both readers have submitted, the agreement shows and a reader's labels download as a
zip."""

from __future__ import annotations

import csv
import io
import re
import zipfile

import pytest

from tests.conftest import SHARED
from tests.e2e.conftest import ARTIFACTS, REPO, fresh_app_data, pick, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "admin-password-1"
PNGS = ("00000075_000.png", "00000100_000.png", "00000211_000.png")  # F, M, F in NIH's labels.csv


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory):
    from services import importer, sidecar

    nih = SHARED / "data" / "nih"
    if not nih.is_dir():
        pytest.skip(f"shared data not found at {nih}")
    users = {
        "boss": ("admin", PASSWORD),
        "ann": ("annotator", "ann-password-1"),
        "bob": ("annotator", "bob-password-1"),
    }
    env, ctx = fresh_app_data(tmp_path_factory.mktemp("tasks-e2e"), users)
    results = importer.import_paths(ctx.engine, ctx.store, [nih / "images" / n for n in PNGS], max_bytes=2**30,
                                    metadata=sidecar.load(nih / "labels.csv"))  # fmt: skip
    assert [r.status for r in results] == ["imported"] * 3
    return run_streamlit(REPO / "asgi.py", env), ctx


def _idle(page):
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=30_000)


def test_an_admin_makes_a_task_with_two_readers_and_sees_it_in_the_list(browser, app, record_errors):
    from sqlalchemy import text

    from db import engine as dbe
    from services import annotations, auth, labelling

    url, ctx = app
    page = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True).new_page()
    errors = record_errors(page)
    sign_in(page, url, "boss", PASSWORD)
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    page.get_by_role("link", name="Labelling tasks").click()
    page.get_by_role("heading", name="Labelling tasks").wait_for(timeout=30_000)
    page.get_by_text("No labelling tasks yet").wait_for(timeout=30_000)

    page.get_by_label("Task name").fill("pilot")
    page.get_by_label("Task name").press("Enter")
    page.get_by_text("3 images match the filter.").wait_for(timeout=30_000)
    page.get_by_label("Sex").click()
    page.get_by_role("option", name="F", exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_text("2 images match the filter.").wait_for(timeout=30_000)
    page.get_by_label("Readers", exact=True).click()
    page.get_by_role("option", name="ann (annotator)").click()
    _idle(page)
    page.get_by_label("Readers", exact=True).click()
    page.get_by_role("option", name="bob (annotator)").click()
    page.keyboard.press("Escape")
    _idle(page)
    page.get_by_role("spinbutton", name="Readers per image").fill("2")
    page.get_by_role("spinbutton", name="Readers per image").press("Enter")
    _idle(page)
    page.get_by_text("Blinded").click()
    _idle(page)
    page.screenshot(path=ARTIFACTS / "tasks-01-new-task.png", full_page=True)
    page.get_by_role("button", name="Create task").click()
    page.get_by_text("Task pilot made: 2 images, readers ann, bob.").wait_for(timeout=30_000)
    page.get_by_text("0 of 2 images done").wait_for(timeout=30_000)
    _idle(page)
    page.screenshot(path=ARTIFACTS / "tasks-02-task-listed.png", full_page=True)

    task = labelling.get(ctx, "pilot")
    assert (task.n_images, task.readers, task.readers_per_image, task.blinded) == (
        2, {"ann": False, "bob": False}, 2, True,
    )  # fmt: skip
    tasks, readers = page.locator(
        '[data-testid="stDataFrame"]'
    ).all()  # the tasks; the selected one's readers
    tasks.locator('td[role="gridcell"]').first.wait_for(state="attached", timeout=10_000)
    cells = tasks.locator(
        'td[role="gridcell"]'
    ).all_text_contents()  # the grid's accessible copy of its cells
    assert cells[:2] == ["pilot", "2"] and "ann, bob" in cells and "ann 0 · bob 0" in cells
    readers.locator('td[role="gridcell"]').first.wait_for(state="attached", timeout=10_000)
    assert readers.locator('td[role="gridcell"]').all_text_contents()[::4] == ["ann", "bob"]
    assert "Readers with submitted readings so far: none yet." in page.content()

    # Both readers submit: the agreement shows, and the reader's labels download as a zip.
    readers_ = {u: auth.authenticate(ctx.engine, u, f"{u}-password-1") for u in ("ann", "bob")}
    with dbe.read(ctx.engine) as s:
        images = list(s.scalars(text("SELECT image_id FROM labelling_task_images ORDER BY image_id")))
    for who, effusion in (("ann", ["present", "absent"]), ("bob", ["present", "present"])):
        for image_id, value in zip(images, effusion, strict=True):
            annotations.save(ctx, readers_[who], image_id, task_id=task.id, status="submitted",
                             labels={"Effusion": value, "Mass": "absent"})  # fmt: skip
    page.get_by_role("link", name="Worklist").click()
    page.get_by_role("link", name="Labelling tasks").click()
    page.get_by_text("Images with the most disagreement").wait_for(timeout=30_000)
    page.get_by_text("2 of 2 images done").wait_for(timeout=30_000)
    page.get_by_role("button", name="Build export").click()
    page.get_by_text("Nothing to export: task pilot has no final labels (adjudicated) yet.").wait_for(
        timeout=30_000
    )
    pick(page, "Source", "reader ann")
    page.get_by_role("button", name="Build export").click()
    download_button = page.get_by_role("button", name=re.compile(r"Download pilot-csv-reader_ann-"))
    with page.expect_download() as download:
        download_button.click()
    with zipfile.ZipFile(download.value.path()) as z:
        rows = list(csv.DictReader(io.StringIO(z.read("labels.csv").decode())))
    assert [(r["reader"], r["Effusion"]) for r in rows] == [("ann", "present"), ("ann", "absent")]
    _idle(page)
    page.screenshot(path=ARTIFACTS / "tasks-03-agreement-and-export.png", full_page=True)
    assert "Traceback" not in page.content()
    assert errors == []
