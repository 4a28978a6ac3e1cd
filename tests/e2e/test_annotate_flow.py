"""The annotator's loop in a real Chromium against `streamlit run asgi.py`: an annotator draws a box, moves it,
brushes a lung correction, reloads (the draft is still there) and submits; a second reader labels the same
image blinded; the adjudicator sets the final; the final exports as a DICOM SEG that reads back."""

from __future__ import annotations

import re
import zipfile

import highdicom as hd
import numpy as np
import pytest

from tests.e2e.conftest import ARTIFACTS, REPO, VIEWER, fresh_app_data, pick, sign_in, viewer_view

pytestmark = pytest.mark.e2e
PASSWORD = "a-long-enough-password"
IMAGE = "00000075_000.png"


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory, shared_data):
    from services import importer, labelling
    from services.auth import SignedIn

    users = {n: (r, PASSWORD) for n, r in (("ann", "annotator"), ("bob", "annotator"), ("adj", "radiologist"),
                                            ("boss", "admin"))}  # fmt: skip
    env, ctx = fresh_app_data(tmp_path_factory.mktemp("annotate-e2e"), users)
    [res] = importer.import_paths(ctx.engine, ctx.store, [shared_data / "nih" / "images" / IMAGE], max_bytes=2**30)
    boss = _user(ctx, "boss")
    task = labelling.create(
        ctx, SignedIn(boss, "boss", "admin", False), name="lungs pilot", image_ids=[res.image_id],
        readers={"ann": False, "bob": False, "adj": True}, readers_per_image=2, blinded=True,
    )  # fmt: skip
    return run_streamlit(REPO / "asgi.py", env), ctx, task


def _user(ctx, name):
    from sqlalchemy import text

    from db import engine as dbe

    with dbe.read(ctx.engine) as s:
        return s.scalar(text("SELECT id FROM users WHERE username = :n"), {"n": name})


def _sign_in(page, url, name):
    sign_in(page, url, name, PASSWORD)
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)


def _idle(page):
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=60_000)


def _open_annotate(page, editor=True):
    page.get_by_role("link", name="Annotate").click()
    page.get_by_role("heading", name="Annotate").wait_for(timeout=30_000)
    if not editor:
        return None
    viewer = page.locator(VIEWER)
    try:
        viewer.get_by_role("button", name="Box", exact=True).wait_for(timeout=30_000)
    except Exception:
        page.screenshot(path=ARTIFACTS / "annotate-failed.png", full_page=True)
        raise
    return viewer


def _to_page(page, x, y):
    """Image pixel (x, y) to page coordinates, through the viewer's current view."""
    v = viewer_view(page)
    box = page.locator(VIEWER).locator("#overlay").bounding_box()
    return box["x"] + x * v["s"] + v["tx"], box["y"] + y * v["s"] + v["ty"]


def _drag(page, a, b, steps=8):
    page.mouse.move(*_to_page(page, *a))
    page.mouse.down()
    page.mouse.move(*_to_page(page, *b), steps=steps)
    page.mouse.up()


def _head(ctx, task, reader):
    from services import annotations

    return annotations.head(ctx, _task_image(ctx, task), task.id, _user(ctx, reader) if reader else None)


def _task_image(ctx, task):
    from sqlalchemy import text

    from db import engine as dbe

    with dbe.read(ctx.engine) as s:
        return s.scalar(text("SELECT image_id FROM labelling_task_images WHERE task_id = :t"), {"t": task.id})


def _wait_for(predicate, page, timeout_s=30):
    for _ in range(int(timeout_s * 4)):
        if predicate():
            return
        page.wait_for_timeout(250)  # polls the database, which the page wrote; no DOM event to wait on
    raise AssertionError("condition not met in time")


def test_annotate_reload_submit_blinded_second_reader_and_final(browser, app, record_errors):
    from services import annotations, exports

    url, ctx, task = app
    page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    errors = record_errors(page)
    _sign_in(page, url, "ann")
    viewer = _open_annotate(page)
    _idle(page)

    # A box, drawn then moved.
    viewer.get_by_role("button", name="Box", exact=True).click()
    _drag(page, (100, 120), (220, 260))
    _wait_for(lambda: (h := _head(ctx, task, "ann")) is not None and len(h.boxes) == 1, page)
    first = _head(ctx, task, "ann").boxes[0]
    assert first["label"] == task.boxes[0] and abs(first["x"] - 100) < 3 and abs(first["w"] - 120) < 3
    _idle(page)
    _drag(page, (160, 190), (200, 220))
    _wait_for(lambda: abs(_head(ctx, task, "ann").boxes[0]["x"] - 140) < 3, page)
    moved = _head(ctx, task, "ann").boxes[0]
    assert abs(moved["y"] - 150) < 3 and abs(moved["w"] - first["w"]) < 0.01

    # A lung correction with the brush (structure 1 = lungs), from an empty map.
    _idle(page)
    viewer.get_by_role("button", name="Brush").click()
    _drag(page, (300, 200), (360, 330), steps=12)
    _wait_for(lambda: _head(ctx, task, "ann").label_map_sha256 is not None, page)
    lm = annotations.load_label_map(ctx, _head(ctx, task, "ann").label_map_sha256)
    assert lm.shape == (512, 512) and set(np.unique(lm)) == {0, 1} and lm[260, 330] == 1 and lm[50, 50] == 0
    latencies = page.evaluate("() => window.__cxrEditor.latencies")
    assert latencies, "the brush stroke repainted"
    page.screenshot(path=ARTIFACTS / "annotate-01-box-and-brush.png", full_page=True)
    # A click on one of the toolbar's controls (here: the heart's layer hidden) gives the focus back to the picture,
    # and the editing keys work.
    viewer.get_by_role("checkbox", name="heart").click()
    assert viewer.locator("#overlay").evaluate("(overlay) => overlay.getRootNode().activeElement === overlay")
    page.keyboard.press("b")
    assert viewer.get_by_role("button", name="Box", exact=True).get_attribute("aria-pressed") == "true"
    viewer.get_by_role("checkbox", name="heart").click()

    # A reload loses nothing: the box and the painted lung come back into the editor.
    _idle(page)
    page.goto(url)
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    _open_annotate(page)
    # the saved label map decoded into the editor (it is filled once its PNG has decoded)
    page.wait_for_function("() => window.__cxrEditor?.map?.some((v) => v !== 0)", timeout=30_000)
    state = page.evaluate("() => ({boxes: window.__cxrEditor.boxes, painted: window.__cxrEditor.map.reduce((a, v) => a + (v === 1), 0)})")
    assert len(state["boxes"]) == 1 and abs(state["boxes"][0]["x"] - moved["x"]) < 0.01
    assert state["painted"] == int((lm == 1).sum())  # pixel-identical round trip through the draft

    # A finding, then Submit: the queue has nothing more for ann (one image, now submitted by her).
    _idle(page)
    page.get_by_role("radiogroup", name="Effusion").get_by_role("radio", name="present").click()
    _wait_for(lambda: _head(ctx, task, "ann").labels.get("Effusion") == "present", page)
    _idle(page)
    page.get_by_role("button", name="Submit").click()
    page.get_by_text("Nothing left for you in this task").wait_for(timeout=30_000)
    assert _head(ctx, task, "ann").status == "submitted"

    # bob reads blinded: none of ann's boxes or labels show.
    bob = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    bob_errors = record_errors(bob)
    _sign_in(bob, url, "bob")
    bviewer = _open_annotate(bob)
    bob.get_by_text("Blinded: the other readers' work shows once the image is closed.").wait_for(timeout=30_000)
    assert bob.evaluate("() => window.__cxrEditor.boxes.length") == 0
    assert "Effusion present" not in bob.content()
    _idle(bob)
    bviewer.get_by_role("button", name="Box", exact=True).click()
    _drag(bob, (105, 118), (225, 262))
    _wait_for(lambda: (h := _head(ctx, task, "bob")) is not None and len(h.boxes) == 1, bob)
    _idle(bob)
    bob.get_by_role("button", name="Submit").click()
    bob.get_by_text("Nothing left for you in this task").wait_for(timeout=30_000)
    bob.screenshot(path=ARTIFACTS / "annotate-02-second-reader-done.png", full_page=True)

    # The adjudicator compares both and sets the final from ann's reading.
    adj = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    adj_errors = record_errors(adj)
    _sign_in(adj, url, "adj")
    _open_annotate(adj, editor=False)
    adj.get_by_text("Nothing left for you in this task").wait_for(timeout=30_000)  # adj is no reader of it
    adj.get_by_role("radio", name="Adjudicate").click()
    adj.get_by_text("Start the final from").wait_for(timeout=30_000)
    _idle(adj)
    adj.get_by_role("button", name="Set final").click()
    adj.get_by_text("Final set by adj").wait_for(timeout=30_000)
    adj.screenshot(path=ARTIFACTS / "annotate-03-final.png", full_page=True)
    final = _head(ctx, task, None)
    assert final.status == "final" and final.reader == "adj" and len(final.boxes) == 1
    np.testing.assert_array_equal(annotations.load_label_map(ctx, final.label_map_sha256), lm)

    # The final downloads in the browser (Labelling tasks page) as a DICOM SEG whose mask is the stored label map.
    boss = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True).new_page()
    boss_errors = record_errors(boss)
    _sign_in(boss, url, "boss")
    boss.get_by_role("link", name="Labelling tasks").click()
    boss.get_by_role("button", name="Build export").wait_for(timeout=30_000)
    _idle(boss)
    pick(boss, "Format", "DICOM SEG")
    _idle(boss)
    boss.get_by_role("button", name="Build export").click()
    button = boss.get_by_role("button", name=re.compile(r"^Download .*seg"))
    with boss.expect_download() as download:
        button.click()
    out = ARTIFACTS / "annotate-seg"
    with zipfile.ZipFile(download.value.path()) as z:
        z.extractall(out)
        [seg_name] = [n for n in z.namelist() if n.endswith(".seg.dcm")]
    seg = hd.seg.segread(out / seg_name)
    assert seg.SegmentSequence[0].SegmentLabel == "lungs"
    np.testing.assert_array_equal(exports.label_map_of(out / seg_name), lm)
    boss.screenshot(path=ARTIFACTS / "annotate-05-seg-download.png", full_page=True)

    for p in (page, bob, adj, boss):
        assert "Traceback" not in p.content()
    assert errors == [] and bob_errors == [] and adj_errors == [] and boss_errors == []


def test_edits_made_while_the_connection_is_down_come_back_after_the_tab_is_reopened(browser, app, shared_data):
    """The browser keeps a copy of every edit until the server has saved it: messages to the server are dropped
    (the connection is down), the tab is closed, a new tab opens the image, and the unsaved box is restored and
    saved."""
    from services import importer, labelling
    from services.auth import SignedIn

    url, ctx, _ = app
    [res] = importer.import_paths(ctx.engine, ctx.store, [shared_data / "nih" / "images" / "00000100_000.png"],
                                  max_bytes=2**30)  # fmt: skip
    task = labelling.create(ctx, SignedIn(_user(ctx, "boss"), "boss", "admin", False), name="connection",
                            image_ids=[res.image_id], readers={"ann": False})  # fmt: skip
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    up = {"on": True}

    def relay(ws):
        server = ws.connect_to_server()
        ws.on_message(lambda m: server.send(m) if up["on"] else None)  # the browser's messages, while "up"
        server.on_message(ws.send)

    context.route_web_socket("**/_stcore/stream", relay)
    page = context.new_page()
    _sign_in(page, url, "ann")
    page.get_by_role("link", name="Annotate").click()
    pick(page, "Task", "connection (1 image)")
    viewer = page.locator(VIEWER)
    viewer.get_by_role("button", name="Box", exact=True).wait_for(timeout=30_000)
    _idle(page)
    viewer.get_by_role("button", name="Box", exact=True).click()
    _drag(page, (50, 60), (150, 160))
    _wait_for(lambda: (h := _head(ctx, task, "ann")) is not None and len(h.boxes) == 1, page)
    _idle(page)

    up["on"] = False
    _drag(page, (250, 260), (350, 380))
    page.wait_for_function(
        "() => JSON.parse(localStorage.getItem(window.__cxrEditor.backupKey))?.boxes.length === 2")
    page.wait_for_timeout(1000)  # what the server would have needed to save it; it gets nothing
    assert len(_head(ctx, task, "ann").boxes) == 1
    page.close()

    up["on"] = True
    page = context.new_page()
    page.goto(url)  # still signed in: the session cookie stays in the browser
    page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    page.get_by_role("link", name="Annotate").click()
    pick(page, "Task", "connection (1 image)")
    page.locator(VIEWER).get_by_text("Unsaved edits from before the connection was lost").wait_for(timeout=30_000)
    _wait_for(lambda: len(_head(ctx, task, "ann").boxes) == 2, page)
    page.screenshot(path=ARTIFACTS / "annotate-04-restored.png", full_page=True)
    # Saved now: the copy is gone, so a later visit restores nothing over newer work.
    page.wait_for_function("() => localStorage.getItem(window.__cxrEditor.backupKey) === null")
    context.close()
