"""The embedding-map tab in a real Chromium: a UMAP map of 40 NIH images coloured by error type; a box dragged on
the map selects a group whose metrics show beside the whole set's, and the tab returns its item ids; a k-means
cluster selects a group too."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODELS
from tests.e2e.conftest import ARTIFACTS, fresh_app_data

pytestmark = pytest.mark.e2e

APP = Path(__file__).resolve().parent / "embedding_map_app.py"
MODEL = "cxr15_mobilenetv3@1.0.0"
FINDING = "Effusion"
N_IMAGES = 40


@pytest.fixture(scope="module")
def app(run_streamlit, shared_data, tmp_path_factory):
    from inference.registry import Registry
    from inference.runner import Runner
    from services import embedding_map, eval_metrics
    from tests.evalsets import nih_set, run_and_wait

    nih = shared_data / "nih"
    folder = tmp_path_factory.mktemp("emap")
    env, ctx = fresh_app_data(folder / "data", {"res": ("researcher", "a-long-password-1")},
                              CXR_REVIEW_DATASET_ROOTS=str(nih.resolve()), CXR_REVIEW_MODELS_DIR=str(MODELS))  # fmt: skip
    info = nih_set(ctx, nih, lambda i, _: i < N_IMAGES, folder / "labels.csv", "map e2e")
    runner = Runner(Registry(ctx.settings.models_dir), "cpu")
    assert run_and_wait(ctx, runner, info.id, MODEL).status == "done"
    # The map is made here (numba's first compile included), so the server finds it in the map cache.
    embedding_map.build_map(ctx, runner, info.id, MODEL, "umap")
    sc = eval_metrics.scored(ctx, runner.registry, info.id, MODEL)
    threshold = float(np.median(sc.scores[:, sc.findings.index(FINDING)]))
    env = env | {"EMAP_SET": str(info.id), "EMAP_REF": MODEL, "EMAP_FINDING": FINDING,
                 "EMAP_THRESHOLD": repr(threshold)}  # fmt: skip
    return run_streamlit(APP, env=env)


def returned(page) -> list[int]:
    return json.loads(page.locator('[data-testid="stCode"] code').inner_text())


def table_rows(page) -> dict[str, list[str]]:
    """The metrics table by group: {group: [cells after the group's name]}."""
    out = {}
    for row in page.locator('[data-testid="stTable"] tbody tr').all():
        cells = [c.inner_text().strip() for c in row.locator("td, th").all()]
        out[cells[1] if cells[0].isdigit() else cells[0]] = cells[2:] if cells[0].isdigit() else cells[1:]
    return out


def wait_for(page, check, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"{what} never happened")


def test_a_box_on_the_map_selects_a_group_and_shows_its_metrics(browser, app, record_errors):
    context = browser.new_context(viewport={"width": 1300, "height": 1300})
    page = context.new_page()
    errors = record_errors(page)
    page.goto(app)
    page.locator(".js-plotly-plot").wait_for(timeout=60_000)
    page.get_by_text("whole set", exact=True).wait_for(timeout=30_000)
    page.get_by_text("Research use only", exact=False).first.wait_for()
    assert "map from the cache" in page.locator('[data-testid="stCaptionContainer"]').first.inner_text()
    before = table_rows(page)
    assert list(before) == ["whole set"] and before["whole set"][0] == str(N_IMAGES)
    assert returned(page) == []
    legend = page.locator(".js-plotly-plot .legendtext").all_text_contents()
    assert sum(int(t.split("(")[1].rstrip(")")) for t in legend) == N_IMAGES  # every image, in one error type
    page.screenshot(path=str(ARTIFACTS / "embedding_map_before.png"), full_page=True)

    # Drag a box over the left half of the map (plotly's drag mode is "select").
    area = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    x0, y0 = area["x"] + area["width"] * 0.02, area["y"] + area["height"] * 0.02
    x1, y1 = area["x"] + area["width"] * 0.5, area["y"] + area["height"] * 0.98
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * i / 10, y0 + (y1 - y0) * i / 10)
    page.mouse.up()
    ids = wait_for(page, lambda: returned(page) or None, "a selection")
    rows = wait_for(page, lambda: r if "selection" in (r := table_rows(page)) else None, "the selection's row")
    assert 0 < len(ids) < N_IMAGES
    assert rows["selection"][0] == str(len(ids))  # the group's image count is the selection's
    assert rows["whole set"] == before["whole set"]  # the whole set's figures stay as they were
    assert rows["selection"] != rows["whole set"]
    page.get_by_text(f"The {len(ids)} selected image(s)").wait_for()
    page.screenshot(path=str(ARTIFACTS / "embedding_map_box.png"), full_page=True)

    # A cluster instead of a box.
    page.get_by_text("A cluster", exact=True).click()
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=60_000)
    picker = page.get_by_test_id("stSelectbox").locator("input")  # the chosen cluster is the input's value
    label = wait_for(page, lambda: v if re.fullmatch(r"C\d+ \(\d+ images\)", v := picker.input_value()) else None,
                     "a cluster")  # fmt: skip
    size = int(label.split("(")[1].split()[0])
    ids = wait_for(page, lambda: r if len(r := returned(page)) == size else None, "the cluster's ids")
    assert table_rows(page)["selection"][0] == str(size)
    page.screenshot(path=str(ARTIFACTS / "embedding_map_cluster.png"), full_page=True)
    assert not errors, errors
    context.close()
