"""Prior and current side by side in a real Chromium against `streamlit run asgi.py`: a radiologist opens a
COVID-19 follow-up film whose patient has an earlier one, compares them, zooms and pans either pane and the other
follows (the two panes' view in the viewer's state, no rerun), then switches on the aligned difference view."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED
from tests.e2e.conftest import ARTIFACTS, REPO, VIEWER, WORKLIST_TABLE, fresh_app_data, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "radiologist-pw"
MODEL_RUN_MS = 300_000  # the models run once on each of the two films, on two shared CPU cores
# Patient 143 of the collection: days 4 (AP) and 8 (AP supine) after the first symptoms.
FILMS = ["covid-19-pneumonia-49-day4.jpg", "covid-19-pneumonia-49-day8.jpg"]
# Patient 250, days 0 and 1 (AP supine, ICU): the AI's lung outlines of these films cannot be aligned.
UNALIGNABLE = ["cb706009.jpg", "e1a4f870.jpg"]


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory, shared_data):
    from services import importer, sidecar

    if not any((SHARED / "models").glob("*.pt")):
        pytest.skip("shared model weights are missing")
    folder = shared_data / "covid_followup"
    env, ctx = fresh_app_data(
        tmp_path_factory.mktemp("e2e-priors-data"), {"rad": ("radiologist", PASSWORD)},
        CXR_REVIEW_MODELS_DIR=str(SHARED / "models"), CXR_REVIEW_DEVICE="cpu",
    )  # fmt: skip
    meta = sidecar.load(folder / "metadata.csv", issuer="ieee8023-covid-chestxray", day_zero=dt.date(2020, 1, 1))
    results = list(importer.import_paths(ctx.engine, ctx.store, [folder / "images" / f for f in UNALIGNABLE + FILMS],
                                         max_bytes=2**30, metadata=meta))  # fmt: skip
    assert [r.status for r in results] == ["imported"] * 4
    return run_streamlit(REPO / "asgi.py", env), results[1].study_id


def _settle(page, ms: int = 1000) -> None:
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=MODEL_RUN_MS)
    page.wait_for_timeout(ms)


def _filters(page) -> list[str]:
    """The W/L preview's CSS filter on each pane's picture ("none" when the picture shows the rendered window)."""
    viewer = page.locator(VIEWER).first
    return [viewer.locator(c).evaluate("(e) => e.style.filter") for c in ("#image", "#image2")]


def _views(page) -> tuple[str | None, str | None]:
    viewer = page.locator(VIEWER).first
    return viewer.locator("#stage").get_attribute("data-view"), viewer.locator("#stage2").get_attribute("data-view")


def _pane_pixels(page, canvas: str) -> np.ndarray:
    shot = page.locator(VIEWER).first.locator(canvas).screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float32)


def test_prior_beside_current_zoom_follows_and_difference_view(browser, app, record_errors):
    url, unalignable = app
    page = browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()
    errors = record_errors(page)
    sign_in(page, url, "rad", PASSWORD)
    page.get_by_text("4 studies ·").wait_for(timeout=60_000)
    grid = page.locator(WORKLIST_TABLE).first
    # Newest import first: the day-8 film, which has the day-4 film as its prior.
    cells = grid.locator("table td")
    cells.filter(has_text="has prior").first.wait_for(state="attached", timeout=30_000)
    assert cells.filter(has_text="has prior").count() == 2
    assert grid.locator("table tr").nth(1).locator("td").filter(has_text="has prior").count() == 1
    page.screenshot(path=ARTIFACTS / "priors-01-worklist.png")
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 38 + 17)
    page.get_by_role("button", name="Mark reviewed").wait_for(timeout=60_000)
    page.get_by_text("2020-01-05 · 4 days before this study").wait_for(timeout=30_000)

    page.locator("label").filter(has_text="Compare with prior").click()
    viewer = page.locator(VIEWER).first
    viewer.locator("#stage2").wait_for(state="visible", timeout=60_000)
    # The prior's Patient ID in its caption: the same patient as the current film, as the reader can check.
    viewer.get_by_text("Prior 2020-01-05 · as acquired, scaled to fit · Patient ID 143").wait_for(timeout=30_000)
    _settle(page)
    fitted = _views(page)
    assert fitted[0] and fitted[0] == fitted[1]
    page.screenshot(path=ARTIFACTS / "priors-02-side-by-side.png")

    # Zoom on the prior: the current follows, in the browser (no rerun starts).
    prior_box = viewer.locator("#overlay2").bounding_box()
    page.mouse.move(prior_box["x"] + prior_box["width"] / 2, prior_box["y"] + prior_box["height"] / 3)
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(500)
    zoomed = _views(page)
    assert zoomed[0] == zoomed[1] and zoomed != fitted
    assert float(zoomed[0].split(",")[0]) > 1.5 * float(fitted[0].split(",")[0])
    # Pan the current: the prior follows.
    cur = viewer.locator("#overlay").bounding_box()
    page.mouse.move(cur["x"] + cur["width"] / 2, cur["y"] + cur["height"] / 2)
    page.mouse.down()
    page.mouse.move(cur["x"] + cur["width"] / 2 + 80, cur["y"] + cur["height"] / 2 + 40, steps=6)
    page.mouse.up()
    page.wait_for_timeout(500)
    panned = _views(page)
    assert panned[0] == panned[1] and panned != zoomed
    (_, tx0, ty0), (_, tx1, ty1) = (map(float, v[0].split(",")) for v in (zoomed, panned))
    assert (round(tx1 - tx0), round(ty1 - ty0)) == (80, 40)
    page.screenshot(path=ARTIFACTS / "priors-03-zoomed-together.png")

    # Window/level dragged on the prior: both panes preview it, and both come back rendered at the new window.
    before = [_pane_pixels(page, c).mean() for c in ("#image", "#image2")]
    viewer.get_by_role("button", name="W/L").click()
    x, y = prior_box["x"] + prior_box["width"] / 2, prior_box["y"] + prior_box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 120, y + 80, steps=6)
    preview = _filters(page)
    page.mouse.up()
    assert preview == ['url("#wl")', 'url("#wl")'], preview
    page.locator("input[aria-label='Centre']:not([value='128.0'])").wait_for(timeout=60_000)  # the rerun's
    _settle(page)
    after = [_pane_pixels(page, c).mean() for c in ("#image", "#image2")]
    assert all(a < b - 5 for a, b in zip(after, before, strict=True)), (before, after)  # a higher centre: both darker
    assert _filters(page) == ["none", "none"]
    assert _views(page) == panned  # the reader's zoom and pan outlive the rerun
    viewer.get_by_role("button", name="Pan").click()

    # The difference view: the models outline the lungs of both films, the prior is aligned and subtracted.
    page.locator("label").filter(has_text="difference").click()
    viewer.get_by_text("Current − prior 2020-01-05").wait_for(timeout=MODEL_RUN_MS)
    _settle(page, 1500)
    assert _views(page)[0] == _views(page)[1] == panned[0]  # the zoom and pan outlived the rerun
    viewer.locator("#fit").click()
    page.wait_for_timeout(500)
    diff, current = _pane_pixels(page, "#image2"), _pane_pixels(page, "#image")
    h, w = diff.shape
    middle = diff[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    # mostly mid-grey (what did not change) with structure where it did; the current film is a radiograph
    assert abs(float(np.median(middle)) - 128) < 20 and middle.std() > 3, (np.median(middle), middle.std())
    assert current[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].std() > 20
    page.get_by_text("Difference = current − aligned prior").wait_for()
    page.screenshot(path=ARTIFACTS / "priors-04-difference.png")
    change = page.get_by_text("Change since the prior (2020-01-05) · Research use only")
    change.scroll_into_view_if_needed()
    page.get_by_text("Cardiothoracic ratio: then").or_(page.get_by_text("Scores then and now from")).first.wait_for()
    page.wait_for_timeout(500)
    page.screenshot(path=ARTIFACTS / "priors-05-change-table.png")

    # Aligned: the prior registered on the lungs, shown as itself.
    page.locator("label").filter(has_text="aligned").click()
    viewer.get_by_text("Prior 2020-01-05 · aligned on the lungs (overlap").wait_for(timeout=60_000)
    _settle(page)
    page.locator("[data-testid='stMain']").evaluate("e => e.scrollTo(0, 0)")
    page.screenshot(path=ARTIFACTS / "priors-06-aligned.png")

    # A pair whose lungs cannot be aligned: side by side, unaligned, with the reason; no difference picture.
    # Back to the worklist, third row (newest import first): patient 250's day-1 film.
    page.get_by_role("link", name="Worklist").click()
    grid = page.locator(WORKLIST_TABLE).first
    grid.locator("table td").filter(has_text="has prior").first.wait_for(state="attached", timeout=30_000)
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 38 + 35 * 2 + 17)
    page.wait_for_url(f"**study={unalignable}", timeout=60_000)
    page.get_by_text("2020-01-01 · 1 day before this study").wait_for(timeout=60_000)
    page.locator("label").filter(has_text="Compare with prior").click()
    viewer.locator("#stage2").wait_for(state="visible", timeout=60_000)
    page.locator("label").filter(has_text="difference").click()
    page.get_by_text("The prior is not aligned:").wait_for(timeout=MODEL_RUN_MS)
    _settle(page)
    viewer.get_by_text("Prior 2020-01-01 · as acquired, scaled to fit").wait_for(timeout=30_000)
    assert viewer.get_by_text("Current − prior").count() == 0
    page.screenshot(path=ARTIFACTS / "priors-07-not-aligned.png")
    assert not errors, errors
