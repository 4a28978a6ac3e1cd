"""The Labelling tasks page through AppTest, on a real SQLite file with real imported images: a task made from a
worklist filter or from a list of image names (unknown names refused, nothing made), a duplicate name refused,
the progress per reader, the agreement of two readers (kappa against scikit-learn's, box F1, mask Dice, the
images they disagree on most), exports downloaded as a zip (CSV rows, a DICOM SEG read back by highdicom, a
missing stored file named in the manifest) and annotations imported from an uploaded CSV."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import highdicom as hd
import numpy as np
import pytest
import streamlit as st
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import text

from db import engine as dbe
from inference.registry import Registry
from services import annotations, auth, context, exports, importer, labelling, settings, sidecar, vocabulary
from services.auth import SignedIn
from tests.conftest import sign_in_through_the_form

PNGS = ("00000075_000.png", "00000100_000.png", "00000211_000.png")  # sex F, M, F (NIH labels.csv); 512x512
DICOM = "siim_cr_chest_pa_1024_jpeg_mono2.dcm"  # sex M
USERS = {"boss": "admin", "res": "researcher", "ann": "annotator", "bob": "annotator", "adj": "radiologist"}


def password(name: str) -> str:
    return f"{name}-password-long"


@pytest.fixture
def world(app_env, shared_data, monkeypatch):
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    s = settings.load(app_env)
    dbe.upgrade(s.db_url)
    ctx = context.build(s)
    st.cache_resource.clear()  # the cached context belongs to the previous test
    st.cache_data.clear()
    nih = shared_data / "nih"
    paths = [nih / "images" / n for n in PNGS] + [shared_data / "dicom" / DICOM]
    results = list(importer.import_paths(ctx.engine, ctx.store, paths, max_bytes=2**30,
                                         metadata=sidecar.load(nih / "labels.csv")))  # fmt: skip
    assert [r.status for r in results] == ["imported"] * 4
    users = {}
    for name, role in USERS.items():
        auth.add_user(ctx.engine, name, role, password(name))
        with dbe.read(ctx.engine) as s:
            uid = s.scalar(text("SELECT id FROM users WHERE username = :n"), {"n": name})
        users[name] = SignedIn(uid, name, role, False)
    with dbe.read(ctx.engine) as s:
        images = {
            r.original_filename: r
            for r in s.execute(text("SELECT id, original_filename, sop_instance_uid, pixel_sha256, file_sha256 FROM images"))
        }  # fmt: skip
    return ctx, users, images


def tasks_page(name: str = "boss"):
    return sign_in_through_the_form(name, password(name)).switch_page("screens/tasks.py").run()


def frame(at, column: str):
    """The first table on the page with that column."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def fill_new_task(at, name, readers, adjudicators=(), per_image=1, blinded=False):
    at.text_input(key="nt_name").input(name)
    at.multiselect(key="nt_readers").set_value(list(readers)).run()
    at.multiselect(key="nt_adjudicators").set_value(list(adjudicators))
    at.number_input(key="nt_per_image").set_value(per_image)
    at.checkbox(key="nt_blinded").set_value(blinded)
    return at


def test_a_task_made_from_a_worklist_filter_is_listed_and_a_duplicate_name_is_refused(world):
    ctx, users, images = world
    at = tasks_page()
    assert not at.exception
    assert at.title[0].value == "Labelling tasks" and "Research use only" in at.caption[0].value
    assert "No labelling tasks yet" in at.info[0].value
    assert any(m.value == "**4** images match the filter." for m in at.markdown)
    at.multiselect(key="nt_sex").set_value(["F"]).run()
    assert any(m.value == "**2** images match the filter." for m in at.markdown)
    # The readers offered: active accounts that label (no researcher); the schema defaults to everything.
    assert at.multiselect(key="nt_readers").options == ["adj (radiologist)", "ann (annotator)", "bob (annotator)",
                                                        "boss (admin)"]  # fmt: skip
    assert at.multiselect(key="nt_findings").value == list(vocabulary.FINDINGS)
    assert at.multiselect(key="nt_structures").value == ["lungs", "heart", "clavicles"]
    fill_new_task(at, "pilot", ["ann", "bob", "adj"], ["adj"], per_image=2, blinded=True)
    at.selectbox(key="nt_order").set_value("rejected_first")
    at.multiselect(key="nt_structures").set_value(["lungs", "heart"])
    at.button(key="nt_create").click().run()
    assert not at.exception and not at.error
    assert [s.value for s in at.success] == ["Task **pilot** made: 2 images, readers ann, bob, adj."]
    row = frame(at, "Readers per image").iloc[0].to_dict()
    assert row == {
        "Task": "pilot", "Images": 2, "Done": 0, "Finals": 0, "Readers per image": 2, "Blinded": True,
        "Order": "rejected_first", "Readers": "ann, bob, adj (adjudicator)", "Submitted per reader": "ann 0 · bob 0 · adj 0",
    }  # fmt: skip
    assert at.selectbox(key="tasks_selected").value == "pilot"
    task = labelling.get(ctx, "pilot")
    with dbe.read(ctx.engine) as s:
        image_ids = set(s.scalars(text("SELECT image_id FROM labelling_task_images")))
    assert image_ids == {images["00000075_000.png"].id, images["00000211_000.png"].id}  # the two women
    assert task.readers == {"ann": False, "bob": False, "adj": True} and task.blinded
    assert task.structures == ("lungs", "heart") and len(task.findings) == 14
    assert at.text_input(key="nt_name").value == ""  # ready for the next task

    # The same name again: refused with the reason, nothing made.
    fill_new_task(at, "pilot", ["ann"])
    at.button(key="nt_create").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Task not made: A task named 'pilot' exists already."]
    # More readers per image than readers: refused too.
    fill_new_task(at, "second", ["ann"], per_image=2)
    at.button(key="nt_create").click().run()
    assert [e.value for e in at.error] == [
        "Task not made: 2 readers per image, but the task has 1 reader(s)."
    ]
    assert [t.name for t in labelling.all_tasks(ctx)] == ["pilot"]


def test_a_list_of_image_names_with_unknown_names_makes_nothing(world):
    ctx, users, images = world
    at = tasks_page("res")  # a researcher makes tasks too
    at.radio(key="nt_source").set_value("list").run()
    listing = f"{images[DICOM].sop_instance_uid}\nno_such_image.png\n00000100_000.png\nnot-stored-either\n"
    at.file_uploader(key="nt_list").set_value(("images.txt", listing.encode(), "text/plain")).run()
    expected = (
        "2 of the 4 image names are not stored: no_such_image.png, not-stored-either. No task was made."
    )
    assert [e.value for e in at.error] == [expected]
    fill_new_task(at, "from a list", ["ann"])
    at.button(key="nt_create").click().run()
    assert [e.value for e in at.error] == [expected] and labelling.all_tasks(ctx) == []

    # A CSV naming the images by its column `image`: by file name, pixel sha256 and SOP Instance UID.
    rows = ["image,comment", "00000075_000.png,first", f"{images['00000100_000.png'].pixel_sha256},",
            f"{images[DICOM].sop_instance_uid},dicom"]  # fmt: skip
    at.file_uploader(key="nt_list").set_value(("images.csv", "\n".join(rows).encode(), "text/csv")).run()
    assert not at.error and any(m.value == "**3** images named, all stored." for m in at.markdown)
    at.button(key="nt_create").click().run()
    assert not at.error
    assert labelling.get(ctx, "from a list").n_images == 3


def _lm(**rects) -> np.ndarray:
    lm = np.zeros((512, 512), np.uint8)
    for value, (r0, r1, c0, c1) in rects.items():
        lm[r0:r1, c0:c1] = {"lungs": 1, "heart": 2}[value]
    return lm


EFFUSION = {"ann": ["present", "absent", "present"], "bob": ["present", "absent", "absent"]}
ANN_LUNGS, BOB_LUNGS = (
    _lm(lungs=(50, 200, 50, 150), heart=(250, 350, 175, 325)),
    _lm(lungs=(100, 200, 50, 150), heart=(250, 350, 175, 325)),
)


def two_readers(ctx, users, images):
    """A task of the three NIH images read by ann and bob (submitted): Effusion differs on the third image,
    Cardiomegaly is absent everywhere, ann drew one box more than bob on the first, and their lungs differ."""
    ids = [images[n].id for n in PNGS]
    task = labelling.create(ctx, users["boss"], name="double", image_ids=ids,
                            readers={"ann": False, "bob": False}, readers_per_image=2)  # fmt: skip
    for reader in ("ann", "bob"):
        for n, image_id in enumerate(ids):
            labels = {"Effusion": EFFUSION[reader][n], "Cardiomegaly": "absent", "Mass": "absent"}
            boxes, lm = [], None
            if n == 0:
                boxes = [{"label": "Effusion", "x": 10, "y": 10, "w": 100, "h": 100}]
                if reader == "ann":
                    boxes.append({"label": "Mass", "x": 300, "y": 300, "w": 50, "h": 50})
                lm = ANN_LUNGS if reader == "ann" else BOB_LUNGS
            if n == 1 and reader == "ann":
                lm = ANN_LUNGS
            annotations.save(ctx, users[reader], image_id, task_id=task.id, status="submitted", labels=labels,
                             boxes=boxes, label_map=lm)  # fmt: skip
    return task


def test_progress_per_reader_and_the_agreement_of_two_readers(world):
    ctx, users, images = world
    task = labelling.create(ctx, users["boss"], name="single", image_ids=[images[PNGS[0]].id],
                            readers={"ann": False, "bob": False})  # fmt: skip
    annotations.save(ctx, users["ann"], images[PNGS[0]].id, task_id=task.id, status="submitted",
                     labels={"Effusion": "present"})  # fmt: skip
    at = tasks_page("res")  # researchers see the readers' names and work
    assert not at.exception
    assert at.selectbox(key="tasks_selected").value == "single"
    assert frame(at, "Submitted").to_dict("records") == [
        {"Reader": "ann", "Adjudicator": False, "Submitted": 1, "Progress": 1},
        {"Reader": "bob", "Adjudicator": False, "Submitted": 0, "Progress": 0},
    ]
    assert "1 of 1 images done" in at.get("progress")[0].proto.text
    assert any("Readers with submitted readings so far: ann (1 image)." in i.value for i in at.info)

    two_readers(ctx, users, images)
    at = tasks_page("res")
    assert at.selectbox(key="tasks_selected").value == "double"  # newest first
    table = frame(at, "Readers per image").set_index("Task")
    assert table.loc["double", "Done"] == 3 and table.loc["double", "Submitted per reader"] == "ann 3 · bob 3"
    assert table.loc["single", "Done"] == 1
    assert frame(at, "Submitted")["Submitted"].tolist() == [3, 3]
    assert not at.exception and not at.error
    kappa = frame(at, "Kappa").set_index("Finding")
    expected = cohen_kappa_score(EFFUSION["ann"], EFFUSION["bob"])
    assert float(kappa.loc["Effusion", "Kappa"]) == pytest.approx(expected, abs=5e-4)
    assert kappa.loc["Effusion", "Agreement"] == "67%" and kappa.loc["Effusion", "Images"] == 3
    low, high = (float(x) for x in kappa.loc["Effusion", "95% interval"].split(" to "))
    assert low <= expected <= high
    assert kappa.loc["Cardiomegaly", "Kappa"] == "not defined"
    assert kappa.loc["Cardiomegaly", "Note"].startswith("every reader gave every image the same rating")
    assert kappa.loc["Cardiomegaly", "Agreement"] == "100%"
    assert "Pneumonia" not in kappa.index  # labelled by nobody
    boxes = frame(at, "F1").iloc[0].to_dict()
    assert boxes == {"Readers": "ann / bob", "F1": "0.667", "Matched": 1, "Boxes (first)": 2, "Boxes (second)": 1,
                     "Images": 3}  # fmt: skip
    masks = frame(at, "Dice").set_index("Structure")
    assert (
        masks.loc["lungs", "Dice"] == "0.800" and masks.loc["heart", "Dice"] == "1.000"
    )  # 2*10000/(15000+10000)
    assert masks.loc["lungs", "Images"] == 1  # only the first image has label maps from both
    worst = frame(at, "Disagree on").to_dict("records")
    assert worst[0] == {"Image": PNGS[0], "Image id": images[PNGS[0]].id,
                        "Disagree on": "boxes ann/bob, lungs ann/bob"}  # fmt: skip
    assert worst[1] == {"Image": PNGS[2], "Image id": images[PNGS[2]].id, "Disagree on": "Effusion"}


def _zip(at) -> dict[str, bytes]:
    built = at.session_state["tasks_export"]  # the bytes the download button offers
    assert [b.label for b in at.get("download_button")] == [f"Download {built['file_name']}"]
    with zipfile.ZipFile(io.BytesIO(built["data"])) as z:
        return {n: z.read(n) for n in z.namelist()}


def test_exports_download_as_a_zip_with_a_manifest(world, tmp_path):
    ctx, users, images = world
    task = two_readers(ctx, users, images)
    at = tasks_page()
    # Finals: none yet, so nothing is exported, and said so.
    at.button(key="dl_build").click().run()
    assert [e.value for e in at.error] == [
        "Nothing exported: Nothing to export: task double has no final labels (adjudicated) yet."
    ]
    at.selectbox(key=f"dl_source_{task.id}").set_value("reader:ann")
    at.button(key="dl_build").click().run()
    assert not at.exception and not at.error
    files = _zip(at)
    assert set(files) == {"labels.csv", "manifest.json"}
    rows = list(csv.DictReader(io.StringIO(files["labels.csv"].decode())))
    assert [(r["image"], r["reader"], r["Effusion"], r["boxes"]) for r in rows] == [
        (PNGS[0], "ann", "present", "2"), (PNGS[1], "ann", "absent", "0"), (PNGS[2], "ann", "present", "0"),
    ]  # fmt: skip
    manifest = json.loads(files["manifest.json"])
    assert (manifest["task"], manifest["format"], manifest["source"], manifest["exported"]) == (
        "double", "csv", "reader:ann", 3,
    )  # fmt: skip

    # DICOM SEG of ann's label maps; the second image's stored file has gone missing: skipped, with the reason.
    ctx.store.path_for(images[PNGS[1]].file_sha256).unlink()
    at.selectbox(key="dl_format").set_value("seg")
    at.button(key="dl_build").click().run()
    assert not at.exception and not at.error
    files = _zip(at)
    manifest = {r["file"]: r for r in json.loads(files["manifest.json"])["images"]}
    assert manifest[PNGS[0]]["status"] == "exported"
    assert manifest[PNGS[1]] == {"image_id": images[PNGS[1]].id, "file": PNGS[1], "status": "skipped", "files": [],
                                 "reason": "its stored file is missing from the image store"}  # fmt: skip
    assert manifest[PNGS[2]]["reason"] == "no label map to write"
    assert "2 image(s) skipped" in at.warning[0].value
    seg_name = next(n for n in manifest[PNGS[0]]["files"] if n.endswith(".seg.dcm"))
    (tmp_path / seg_name).write_bytes(files[seg_name])
    seg = hd.seg.segread(tmp_path / seg_name)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["lungs", "heart"]  # the structures ann outlined
    np.testing.assert_array_equal(exports.label_map_of(tmp_path / seg_name), ANN_LUNGS)
    assert set(files) == {"manifest.json", *(f for r in manifest.values() for f in r["files"])}  # as listed
    with dbe.read(ctx.engine) as s:  # every build went through exports.write, which audits it
        details = [
            json.loads(d) for d in s.scalars(text("SELECT details FROM audit_events WHERE action = 'export'"))
        ]
    assert [(d["format"], d["source"], d["images"]) for d in details] == [
        ("csv", "reader", 3),
        ("seg", "reader", 1),
    ]


def test_annotations_imported_from_an_uploaded_csv_show_per_row_results(world):
    ctx, users, images = world
    task = labelling.create(ctx, users["boss"], name="imports", image_ids=[images[n].id for n in PNGS],
                            readers={"ann": False, "bob": False})  # fmt: skip
    at = tasks_page()
    bad = "image,Finding Labels\n00000075_000.png,Effusion\nnot_stored.png,Mass\n"
    at.file_uploader(key="imp_file").set_value(("bob.csv", bad.encode(), "text/csv"))
    at.selectbox(key="imp_reader").set_value("bob")
    at.run()
    assert at.selectbox(key="imp_task").value == "imports"
    at.button(key="imp_go").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Nothing of bob.csv was applied: a file is applied whole or not at all. The reasons are below."
    ]
    assert frame(at, "Where").to_dict("records") == [
        {"Where": "row 2", "Image": "00000075_000.png", "Result": "rejected",
         "Reason": "not applied: another row of this file was rejected"},
        {"Where": "row 3", "Image": "not_stored.png", "Result": "rejected", "Reason": "image 'not_stored.png' is not stored"},
    ]  # fmt: skip
    good = "image,Finding Labels\n00000075_000.png,Effusion\n00000100_000.png,No Finding\n"
    at.file_uploader(key="imp_file").set_value(("bob.csv", good.encode(), "text/csv")).run()
    at.button(key="imp_go").click().run()
    assert [s.value for s in at.success] == ["All 2 rows of bob.csv applied."]
    assert frame(at, "Submitted").set_index("Reader").loc["bob", "Submitted"] == 2
    assert labelling.progress(ctx, task.id).per_reader == {"ann": 0, "bob": 2}


def test_an_ai_export_analyses_the_images_first_and_skips_one_whose_file_is_missing(world):
    ctx, users, images = world
    task = labelling.create(ctx, users["boss"], name="ai", image_ids=[images[n].id for n in PNGS[:2]],
                            readers={"ann": False})  # fmt: skip
    ctx.store.path_for(images[PNGS[1]].file_sha256).unlink()
    at = tasks_page("res")
    at.selectbox(key=f"dl_source_{task.id}").set_value("ai").run()
    assert any("Research use only" in c.value for c in at.caption if c.value.startswith("AI output"))
    at.button(key="dl_build").click().run()
    assert not at.exception and not at.error
    files = _zip(at)
    rows = list(csv.DictReader(io.StringIO(files["labels.csv"].decode())))
    default = Registry(ctx.settings.models_dir).for_task("classification").ref  # the version that runs
    assert [(r["image"], r["model"]) for r in rows] == [(PNGS[0], default)]
    assert rows[0]["Cardiomegaly"] in ("present", "absent") and len(rows[0]["weights_sha256"]) == 64
    manifest = json.loads(files["manifest.json"])
    assert manifest["research_use"].startswith("Research use only")
    assert [(r["file"], r["status"], r["reason"]) for r in manifest["images"]] == [
        (PNGS[0], "exported", None), (PNGS[1], "skipped", "its stored file is missing from the image store"),
    ]  # fmt: skip
    with dbe.read(ctx.engine) as s:  # analysed now, and kept for the next time
        assert s.scalar(text("SELECT count(*) FROM predictions WHERE pixel_sha256 = :p"),
                        {"p": images[PNGS[0]].pixel_sha256}) >= 1  # fmt: skip


@pytest.mark.parametrize("reader", ["ann", "adj"])
def test_annotators_and_radiologists_have_no_labelling_tasks_page(world, reader):
    at = sign_in_through_the_form(reader, password(reader))
    assert "Labelling tasks" not in [link.label for link in at.sidebar.get("page_link")]
    at.switch_page("screens/tasks.py").run()  # a typed URL or a bookmark: refused, and told why
    role = "annotator" if reader == "ann" else "radiologist"
    assert at.title[0].value == "Worklist" and not at.exception
    assert [w.value for w in at.warning] == [f"Your role ({role}) may not open Labelling tasks; you are on the Worklist."]
