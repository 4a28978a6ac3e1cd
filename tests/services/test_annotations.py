"""Annotations on a real SQLite file with real imported images: versions are never overwritten, an edit from a
stale version is kept and named as a conflict, bad content is refused with its reason, annotators write only
their own line and only adjudicators set finals; labelling tasks and their queue."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text

from db import engine as dbe
from services import annotations, auth, importer, labelling, vocabulary
from services.auth import SignedIn

IMAGES = ("00000075_000.png", "00000100_000.png", "00000211_000.png")


@pytest.fixture
def world(ctx, shared_data):
    paths = [shared_data / "nih" / "images" / n for n in IMAGES] + [
        shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm"
    ]
    results = list(importer.import_paths(ctx.engine, ctx.store, paths, max_bytes=2**30))
    assert [r.status for r in results] == ["imported"] * 4
    users = {}
    for name, role in (("ann", "annotator"), ("bob", "annotator"), ("adj", "radiologist"), ("res", "researcher"),
                       ("boss", "admin")):  # fmt: skip
        auth.add_user(ctx.engine, name, role, f"{name}-password-long")
        with dbe.read(ctx.engine) as s:
            uid = s.scalar(text("SELECT id FROM users WHERE username = :n"), {"n": name})
        users[name] = SignedIn(uid, name, role, False)
    with dbe.read(ctx.engine) as s:
        image_ids = list(s.scalars(text("SELECT id FROM images ORDER BY id")))
    return ctx, users, image_ids


def _task(ctx, users, image_ids, **kw):
    return labelling.create(
        ctx, users["boss"], name=kw.pop("name", "pilot"), image_ids=image_ids,
        readers={"ann": False, "bob": False, "adj": True}, **kw,
    )  # fmt: skip


def test_versions_are_never_overwritten_and_a_stale_save_is_kept_as_a_conflict(world):
    ctx, users, (img, *_) = world
    ann = users["ann"]
    first = annotations.save(
        ctx,
        ann,
        img,
        labels={"Effusion": "present"},
        boxes=[{"label": "Effusion", "x": 10, "y": 20, "w": 30, "h": 40}],
    )
    assert first.conflict is None
    second = annotations.save(ctx, ann, img, parent_id=first.version_id, labels={"Effusion": "absent"})
    assert second.conflict is None
    # A second tab still on the first version saves: kept too, and told who changed it when.
    third = annotations.save(ctx, ann, img, parent_id=first.version_id, boxes=[])
    assert third.conflict and third.conflict.startswith("changed by ann at ")
    versions = annotations.history(ctx, img, None, ann.user_id)
    assert [v.id for v in versions] == [first.version_id, second.version_id, third.version_id]
    assert versions[0].labels == {"Effusion": "present"} and versions[1].labels == {"Effusion": "absent"}
    assert versions[1].boxes == versions[0].boxes  # fields not given come from the parent
    assert versions[2].labels == {"Effusion": "present"} and versions[2].boxes == []
    assert versions[2].conflict_with_id == second.version_id
    # The table refuses changes, and every save left an audit row.
    for statement in ("UPDATE annotation_versions SET labels = '{}'", "DELETE FROM annotation_versions"):
        with pytest.raises(Exception, match="annotation_versions is append-only"):
            dbe.write(ctx.engine, lambda s, q=statement: s.execute(text(q)))
    with dbe.read(ctx.engine) as s:
        assert s.scalar(text("SELECT count(*) FROM audit_events WHERE action = 'annotation_saved'")) == 3


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"labels": {"Pneumonitis": "present"}}, "unknown finding 'Pneumonitis'"),
        ({"labels": {"Effusion": "maybe"}}, "'maybe' is not one of present, absent, uncertain"),
        ({"labels": {"No Finding": "present", "Mass": "present"}}, "No Finding cannot be present together"),
        (
            {"boxes": [{"label": "Mass", "x": 500, "y": 10, "w": 100, "h": 10}]},
            "lies outside the 512x512 image",
        ),
        (
            {"boxes": [{"label": "Mass", "x": 1, "y": 1, "w": 0, "h": 10}]},
            "width and height must be positive",
        ),
        ({"boxes": [{"label": "Mass", "x": 1, "y": 1}]}, "missing w"),
        (
            {"label_map": np.zeros((256, 512), np.uint8)},
            "the mask is 512x256 but the image is 512x512: refused",
        ),
        ({"label_map": np.full((512, 512), 7, np.uint8)}, "holds integers 0..3"),
        ({"polygons": [{"label": "lungs", "points": [[0, 0], [5, 5]]}]}, "needs 3 to"),
    ],
)
def test_bad_content_is_refused_with_its_reason_and_nothing_is_written(world, content, reason):
    ctx, users, (img, *_) = world
    with pytest.raises(annotations.AnnotationError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        annotations.save(ctx, users["ann"], img, **content)
    assert annotations.history(ctx, img, None, users["ann"].user_id) == []


def test_a_label_map_is_kept_in_the_store_and_comes_back_pixel_identical(world):
    ctx, users, (img, *_) = world
    lm = np.zeros((512, 512), np.uint8)  # the NIH sample images are 512x512
    lm[50:200, 50:150], lm[50:200, 300:400], lm[250:350, 175:325] = 1, 1, 2
    saved = annotations.save(ctx, users["ann"], img, label_map=lm)
    v = annotations.head(ctx, img, None, users["ann"].user_id)
    assert v.id == saved.version_id
    np.testing.assert_array_equal(annotations.load_label_map(ctx, v.label_map_sha256), lm)


def test_annotators_write_their_own_line_and_only_adjudicators_set_finals(world):
    ctx, users, image_ids = world
    task = _task(ctx, users, image_ids)
    img = image_ids[0]
    with pytest.raises(annotations.NotAllowed, match="researchers read annotations"):
        annotations.save(ctx, users["res"], img, task_id=task.id, labels={"Mass": "present"})
    with pytest.raises(annotations.NotAllowed, match="only an adjudicator"):
        annotations.save(ctx, users["ann"], img, task_id=task.id, status="final", labels={"Mass": "present"})
    auth.add_user(ctx.engine, "eve", "annotator", "eve-password-long")
    with dbe.read(ctx.engine) as s:
        eve = SignedIn(
            s.scalar(text("SELECT id FROM users WHERE username = 'eve'")), "eve", "annotator", False
        )
    with pytest.raises(annotations.NotAllowed, match="eve is not a reader of this task"):
        annotations.save(ctx, eve, img, task_id=task.id, labels={"Mass": "present"})
    with pytest.raises(annotations.AnnotationError, match="not in this task's schema"):
        labelling.create(
            ctx, users["boss"], name="masses", image_ids=[img], readers={"ann": False}, findings=["Mass"]
        )
        annotations.save(
            ctx, users["ann"], img, task_id=labelling.get(ctx, "masses").id, labels={"Effusion": "present"}
        )
    annotations.save(ctx, users["ann"], img, task_id=task.id, status="submitted", labels={"Mass": "present"})
    final = annotations.save(
        ctx, users["adj"], img, task_id=task.id, status="final", labels={"Mass": "absent"}
    )
    head = annotations.head(ctx, img, task.id, None)
    assert head.id == final.version_id and head.reader == "adj" and head.labels == {"Mass": "absent"}
    # the reader's own line is untouched by the final
    assert annotations.head(ctx, img, task.id, users["ann"].user_id).labels == {"Mass": "present"}


def test_the_queue_gives_each_reader_the_images_that_still_need_them(world):
    ctx, users, image_ids = world
    task = _task(ctx, users, image_ids, readers_per_image=2, blinded=True)
    ann, bob, adj = users["ann"], users["bob"], users["adj"]
    first = labelling.next_image(ctx, task.id, ann.user_id)
    assert first in image_ids
    annotations.save(ctx, ann, first, task_id=task.id, labels={"Mass": "present"})
    assert labelling.next_image(ctx, task.id, ann.user_id) == first  # an open draft comes back first
    # Blinded: bob does not see ann's draft; the adjudicator does.
    assert labelling.visible_lines(ctx, task.id, first, bob) == []
    assert [v.reader for v in labelling.visible_lines(ctx, task.id, first, adj)] == ["ann"]
    annotations.save(ctx, ann, first, task_id=task.id, status="submitted", from_newest=True)
    assert labelling.next_image(ctx, task.id, ann.user_id) != first
    assert labelling.next_image(ctx, task.id, bob.user_id) == first  # it still needs a second reader
    annotations.save(ctx, bob, first, task_id=task.id, status="submitted", labels={"Mass": "absent"})
    assert labelling.closed(ctx, task.id, first)
    assert sorted(v.reader for v in labelling.visible_lines(ctx, task.id, first, bob)) == ["ann", "bob"]
    p = labelling.progress(ctx, task.id)
    assert (p.images, p.done, p.finals, p.per_reader) == (4, 1, 0, {"ann": 1, "bob": 1, "adj": 0})
    # Nobody gets the closed image again.
    for reader in (ann, bob, adj):
        assert labelling.next_image(ctx, task.id, reader.user_id) != first


def test_a_task_refuses_what_it_cannot_be(world):
    ctx, users, image_ids = world
    with pytest.raises(labelling.TaskError, match="only an admin or a researcher"):
        labelling.create(ctx, users["ann"], name="x", image_ids=image_ids, readers={"ann": False})
    with pytest.raises(labelling.TaskError, match="3 readers per image, but the task has 2"):
        labelling.create(ctx, users["res"], name="x", image_ids=image_ids, readers={"ann": False, "bob": False},
                         readers_per_image=3)  # fmt: skip
    with pytest.raises(labelling.TaskError, match="res is a researcher"):
        labelling.create(ctx, users["res"], name="x", image_ids=image_ids, readers={"res": False})
    with pytest.raises(labelling.TaskError, match="image 999 is not stored"):
        labelling.create(ctx, users["res"], name="x", image_ids=[999], readers={"ann": False})
    _task(ctx, users, image_ids)
    with pytest.raises(labelling.TaskError, match="exists already"):
        _task(ctx, users, image_ids)


def test_rejected_first_puts_images_with_rejected_ai_statements_first(world):
    from services import verdicts

    ctx, users, image_ids = world
    item = {
        "kind": "finding",
        "key": "Mass",
        "model": {"id": "m", "version": "1", "weights_sha256": "0" * 64},
    }
    with dbe.read(ctx.engine) as s:
        study_of = dict(s.execute(text("SELECT id, study_id FROM images")).all())
    target = image_ids[2]
    verdicts.save(ctx.engine, study_of[target], target, users["adj"].user_id, [(item, "reject", None, None)])
    task = _task(ctx, users, image_ids, queue_order="rejected_first")
    assert labelling.next_image(ctx, task.id, users["ann"].user_id) == target
    assert json.loads(json.dumps(task.findings))  # the schema defaults to every finding


def test_two_readers_of_a_single_pass_task_are_not_given_the_same_image(world):
    ctx, users, image_ids = world
    task = _task(ctx, users, image_ids, name="single", readers_per_image=1)
    ann, bob = users["ann"], users["bob"]
    first = labelling.next_image(ctx, task.id, ann.user_id)
    annotations.save(ctx, ann, first, task_id=task.id, labels={"Mass": "present"})  # ann is reading it
    assert labelling.next_image(ctx, task.id, bob.user_id) not in (first, None)
    assert labelling.next_image(ctx, task.id, ann.user_id) == first
    annotations.save(ctx, ann, first, task_id=task.id, status="submitted", from_newest=True)
    assert first not in {labelling.next_image(ctx, task.id, r.user_id) for r in (ann, bob)}


def test_an_import_into_a_task_keeps_to_its_images_and_schema(world, tmp_path):
    from services import annotation_import

    ctx, users, image_ids = world
    task = labelling.create(ctx, users["boss"], name="effusions", image_ids=image_ids[:2], readers={"ann": False},
                            findings=["Effusion"])  # fmt: skip
    with dbe.read(ctx.engine) as s:
        names = dict(s.execute(text("SELECT id, original_filename FROM images")).all())
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(f"image,Finding Labels\n{names[image_ids[0]]},Effusion|Mass\n{names[image_ids[1]]},No Finding\n")
    results = annotation_import.import_file(ctx, csv_file, "ann", "effusions", uploaded_by=users["boss"].user_id)
    assert [r.status for r in results] == ["applied", "applied"]
    v = annotations.head(ctx, image_ids[0], task.id, users["ann"].user_id)
    assert v.labels == {"Effusion": "present", "No Finding": "absent"}  # Mass is not in the task's schema
    csv_file.write_text(f"image,Finding Labels\n{names[image_ids[2]]},Effusion\n")
    [r] = annotation_import.import_file(ctx, csv_file, "ann", "effusions")
    assert r.status == "rejected" and "is not in this task" in r.reason
    with pytest.raises(annotation_import.ImportFileError, match="zoe is not a reader of task 'effusions'"):
        annotation_import.import_file(ctx, csv_file, "zoe", "effusions")
    with dbe.read(ctx.engine) as s:
        assert s.scalar(text("SELECT count(*) FROM users WHERE username = 'zoe'")) == 0  # no account made
        actor, details = s.execute(text(
            "SELECT actor_id, details FROM audit_events WHERE action = 'annotations_imported'")).one()
    assert actor == users["boss"].user_id and json.loads(details)["reader"] == users["ann"].user_id


def test_an_erased_map_disagrees_with_an_outlined_one_and_polygons_export_to_coco(world, tmp_path):
    from services import agreement_report, exports

    ctx, users, image_ids = world
    img = image_ids[0]
    lm = np.zeros((512, 512), np.uint8)
    lm[100:300, 80:200] = 1
    poly = [{"label": "lungs", "points": [[80, 100], [200, 100], [200, 300], [80, 300]]}]
    annotations.save(ctx, users["ann"], img, status="submitted", label_map=lm, polygons=poly, labels={"Mass": "absent"})
    annotations.save(ctx, users["bob"], img, status="submitted", label_map=np.zeros_like(lm), labels={"Mass": "absent"})
    report = agreement_report.report(ctx, None, ["ann", "bob"])
    assert report["masks"]["lungs"]["ann|bob"]["dice_mean"] == 0.0  # "no lungs" is a reading, not a gap
    assert any("lungs ann/bob" in d["disagree_on"] for d in report["most_disagreement"])
    exports.write(ctx, "coco", exports.gather(ctx, "reader:ann", None, []), tmp_path)
    doc = json.loads((tmp_path / "annotations.coco.json").read_text())
    [ann] = doc["annotations"]
    assert {c["id"]: c["name"] for c in doc["categories"]}[ann["category_id"]] == "lungs"
    assert ann["segmentation"] == [[80, 100, 200, 100, 200, 300, 80, 300]] and ann["area"] == 120 * 200
    assert ann["bbox"] == [80, 100, 120, 200]


def test_the_ai_proposal_keeps_to_the_schema_and_names_the_ai_items_its_boxes_came_from(world):
    from inference.registry import Registry
    from inference.runner import Runner

    ctx, users, image_ids = world
    with dbe.read(ctx.engine) as s:
        row = s.execute(text("SELECT id, pixel_sha256, file_sha256 FROM images ORDER BY id DESC LIMIT 1")).one()
    image = {"id": row.id, "pixel_sha256": row.pixel_sha256, "file_sha256": row.file_sha256}
    runner = Runner(Registry(ctx.settings.models_dir), "cpu")
    ai = annotations.ai_reading(ctx, runner, image)
    present = [k for k, v in ai.labels.items() if v == "present"]
    assert present and not (vocabulary.NO_FINDING in present and len(present) > 1)
    schema = tuple(present[:1])
    labels, boxes, lm, prediction_id = annotations.ai_proposal(ctx, runner, image, schema, ("lungs",))
    assert labels == {schema[0]: "present"} and all(b["label"] == schema[0] for b in boxes)
    assert prediction_id is not None and lm is not None and set(np.unique(lm)) <= {0, 1}
    with dbe.read(ctx.engine) as s:
        items = dict(s.execute(text("SELECT id, key FROM prediction_items WHERE prediction_id = :p"),
                               {"p": prediction_id}).all())  # fmt: skip
    assert all(items[b["item_id"]].startswith(f"{b['label']}#") for b in boxes)
    saved = annotations.save(ctx, users["ann"], row.id, labels=labels, boxes=boxes, label_map=lm,
                             proposal_prediction_id=prediction_id)  # fmt: skip
    assert annotations.head(ctx, row.id, None, users["ann"].user_id).proposal_prediction_id == prediction_id
    assert saved.conflict is None


def test_a_multi_label_version_without_no_finding_still_says_whether_the_film_is_normal(world):
    from inference.registry import Registry
    from inference.runner import Runner
    from services import models_admin

    ctx, users, _ = world
    registry = Registry(ctx.settings.models_dir)
    models_admin.set_active(ctx, registry, "classification", "cxr14_mobilenetv3_multilabel@1.3.0", users["boss"].user_id)
    runner = Runner(registry, "cpu")
    with dbe.read(ctx.engine) as s:
        rows = s.execute(text("SELECT id, pixel_sha256, file_sha256 FROM images ORDER BY id")).all()
    for row in rows[:2]:
        ai = annotations.ai_reading(ctx, runner, {"id": row.id, "pixel_sha256": row.pixel_sha256,
                                                  "file_sha256": row.file_sha256})  # fmt: skip
        assert ai.models["classification"]["version"] == "1.3.0"
        found = any(v == "present" for k, v in ai.labels.items() if k != vocabulary.NO_FINDING)
        assert ai.labels[vocabulary.NO_FINDING] == ("absent" if found else "present")
