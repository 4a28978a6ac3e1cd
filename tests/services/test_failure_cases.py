"""The failure-case explorer's services: ordering by loss, false negatives and positives at a threshold, the
likely-label-error rule and the subgroup filters on hand-made scores; then on real NIH images, a real SQLite file
and the real classifier: tiles with their stored heatmaps (and one computed where no result has it), an image
whose file is gone, similar cases, and a group sent to annotators (folder items imported once)."""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from db import annotations as db_annotations
from db import engine as dbe
from db.models import Image
from inference.registry import Registry
from inference.runner import Runner
from services import auth, eval_metrics, eval_sets, failure_cases, labelling
from tests.conftest import finished_run, nih_subset_csv

MODEL, OTHER = "cxr15_mobilenetv3@1.0.0", "cxr14_mobilenetv3_multilabel@1.1.0"
FILES = ["00000075_000.png", "00000100_000.png", "00000211_000.png", "00000550_000.png", "00000797_000.png"]


def _item(i: int, label: bool | None, sex: str | None = None, view: str | None = None) -> eval_sets.Item:
    return eval_sets.Item(i, f"{i:064x}", {"Mass": label}, f"f{i}.png", None, sex, None, view, "nih")


def _scored(labels: list[bool | None], scores: list[float], **fields) -> eval_metrics.Scored:
    items = [_item(i, y, **{k: v[i] for k, v in fields.items()}) for i, y in enumerate(labels)]
    return eval_metrics.Scored(None, items, ["Mass"], np.array(scores, float)[:, None], np.ones(len(items), bool))


def test_cases_are_ordered_by_their_binary_cross_entropy():
    sc = _scored([True, False, True, False, None], [0.9, 0.8, 0.2, 0.1, 0.99])
    cs = failure_cases.cases(sc, "Mass")
    assert [c.row for c in cs] == [1, 2, 3, 0]  # the unlabelled item is left out
    assert [round(c.loss, 6) for c in cs] == [round(-math.log(x), 6) for x in (0.2, 0.2, 0.9, 0.9)]
    # equal losses keep the set's order; a score of exactly 0 or 1 gives a finite loss
    edge = failure_cases.cases(_scored([True, False], [0.0, 1.0]), "Mass")
    assert all(math.isfinite(c.loss) and c.loss > 15 for c in edge)


def test_false_negatives_and_positives_at_a_threshold_follow_at_or_over_is_positive():
    sc = _scored([True, True, True, False, False, False], [0.3, 0.5, 0.7, 0.5, 0.49, 0.9])
    cs = failure_cases.cases(sc, "Mass")
    assert [c.row for c in failure_cases.false_negatives(cs, 0.5)] == [0]
    assert [c.row for c in failure_cases.false_positives(cs, 0.5)] == [5, 3]  # by loss: 0.9 before 0.5
    assert [c.row for c in failure_cases.false_negatives(cs, 0.8)] == [0, 1, 2]
    assert failure_cases.false_positives(cs, 0.95) == []


def test_likely_label_errors_are_confident_disagreements_by_loss():
    neg = list(np.linspace(0.10, 0.50, 21))
    pos = list(np.linspace(0.50, 0.90, 21))
    labels = [False] * 21 + [True] * 21 + [True, False, True]
    scores = neg + pos + [0.05, 0.97, 0.11]  # 0.11 is under the negatives' 5th percentile (0.12) too
    cs = failure_cases.cases(_scored(labels, scores), "Mass")
    found, why = failure_cases.label_errors(cs)
    assert why is None
    assert [c.row for c in found] == [43, 42, 44]  # 0.97 negative (loss 3.5), 0.05 positive (3.0), 0.11 positive
    assert "5th percentile of the negatives' scores" in failure_cases.label_error_rule()
    no_pos = failure_cases.cases(_scored([False, False], [0.1, 0.9]), "Mass")
    assert failure_cases.label_errors(no_pos) == ([], "no positives")


def test_subgroup_filters_and_pages():
    sc = _scored([True, False, True, False], [0.1, 0.9, 0.2, 0.8], sex=["F", "M", "M", None], view=["PA", "AP", "AP", "PA"])
    cs = failure_cases.cases(sc, "Mass")
    assert failure_cases.group_values(cs)["sex"] == ["female", "male"]
    assert {c.row for c in failure_cases.only(cs, {"sex": ["male"], "view": []})} == {1, 2}
    assert {c.row for c in failure_cases.only(cs, {"sex": ["male"], "view": ["PA"]})} == set()
    assert failure_cases.pages(25, 12) == 3 and failure_cases.page_of(list(range(25)), 3, 12) == [24]


# --- on real images ---------------------------------------------------------------------------------------------
@pytest.fixture
def world(ctx, shared_data, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in FILES:
        shutil.copy(shared_data / "nih" / "images" / name, folder)
    labels = nih_subset_csv(shared_data / "nih", FILES, tmp_path / "labels.csv")
    ctx = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, dataset_roots=(tmp_path.resolve(),)))
    auth.add_user(ctx.engine, "res", "researcher", "a-long-password-1")
    auth.add_user(ctx.engine, "ann", "annotator", "a-long-password-2")
    runner = Runner(Registry(ctx.settings.models_dir), "cpu")
    info = eval_sets.from_folder(ctx, "five", folder, labels, 1).info
    finished_run(ctx, runner, info.id, MODEL)
    return ctx, runner, info, eval_metrics.scored(ctx, runner.registry, info.id, MODEL), folder


def _images(ctx) -> int:
    with dbe.read(ctx.engine) as s:
        return s.scalar(select(func.count(Image.id)))


def test_a_tile_shows_the_stored_heatmap_and_names_an_image_that_is_gone(world):
    ctx, runner, info, sc, folder = world
    item = sc.items[0]
    tile = failure_cases.tile(ctx, runner, sc.spec, info, item, "Cardiomegaly")
    assert tile.note == "heatmap from the stored result"
    pic = cv2.imdecode(np.frombuffer(tile.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert max(pic.shape[:2]) == failure_cases.TILE
    plain = cv2.imdecode(np.frombuffer(failure_cases.tile_jpeg(ctx, info, item, None), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(pic.astype(int) - plain.astype(int)).mean() > 1  # the heatmap is on it
    assert failure_cases.tile(ctx, runner, sc.spec, info, item, "No Finding").note.startswith("no heatmap")
    (folder / item.file_name).unlink()
    gone = failure_cases.tile(ctx, runner, sc.spec, info, item, "Cardiomegaly")
    assert gone.jpeg is None and gone.note == f"{item.file_name}: no such file"


def test_a_heatmap_missing_from_the_results_is_computed_once_and_stored(world):
    ctx, runner, info, sc, _ = world
    other = runner.registry.resolve(OTHER)  # no run of this version: no stored result has its heatmap
    key, note = failure_cases.heatmap_key(ctx, runner, other, info, sc.items[1], "Effusion")
    assert note == "heatmap computed for this page" and ctx.store.path_for(key).is_file()
    heat = cv2.imdecode(np.fromfile(ctx.store.path_for(key), np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.ndim == 2 and heat.max() > 0
    calls = []
    real = runner.gradcams
    runner.gradcams = lambda *a, **k: calls.append(a) or real(*a, **k)
    assert failure_cases.heatmap_key(ctx, runner, other, info, sc.items[1], "Effusion") == (key, note)
    assert calls == []  # the second time from the cache


def test_similar_cases_in_the_set_and_in_the_database(world):
    ctx, runner, info, sc, _ = world
    actor = auth.authenticate(ctx.engine, "res", "a-long-password-1")
    failure_cases.stored_image_ids(ctx, info, sc.items[2:], actor.user_id)  # three images in the database
    found = failure_cases.similar_cases(ctx, runner, sc, info, 0, "Cardiomegaly", k=3)
    assert found["model"]["weights_sha256"] and found["scored_by"] == sc.spec.provenance()
    names = [n["item"] for n in found["in_set"]]
    assert len(names) == 3 and FILES[0] not in names and set(names) <= set(FILES)
    assert [n["distance"] for n in found["in_set"]] == sorted(n["distance"] for n in found["in_set"])
    j = sc.findings.index("Cardiomegaly")
    first = next(i for i, it in enumerate(sc.items) if it.file_name == names[0])
    assert found["in_set"][0]["score"] == pytest.approx(sc.scores[first, j])
    assert {n["file"] for n in found["in_database"]} == set(FILES[2:])
    assert all(n["score"] is not None and n["labels"] != "not in this set" for n in found["in_database"])
    # the query stored too: it is never its own neighbour
    failure_cases.stored_image_ids(ctx, info, sc.items[:1], actor.user_id)
    again = failure_cases.similar_cases(ctx, runner, sc, info, 0, "Cardiomegaly", k=10)
    assert FILES[0] not in {n["file"] for n in again["in_database"]} and len(again["in_database"]) == 3


def test_a_group_sent_to_annotators_imports_folder_items_once_and_becomes_a_task(world):
    ctx, runner, info, sc, _ = world
    actor = auth.authenticate(ctx.engine, "res", "a-long-password-1")
    group = sc.items[:3]
    assert _images(ctx) == 0
    sent = failure_cases.send(ctx, actor, info, group, name="fn-check", readers={"ann": False}, findings=["Mass"])
    assert sent.problems == [] and sent.task.n_images == 3 and sent.task.findings == ("Mass",)
    with dbe.read(ctx.engine) as s:
        task_images = db_annotations.task_images(s, labelling.get(ctx, "fn-check").id)
        pixels = set(s.scalars(select(Image.pixel_sha256).where(Image.id.in_(task_images))))
    assert pixels == {it.pixel_sha256 for it in group} and _images(ctx) == 3
    with dbe.read(ctx.engine) as s:  # the labels CSV's sex, age and view went with the images
        image = s.scalar(select(Image).where(Image.pixel_sha256 == group[0].pixel_sha256))
        assert (image.study.patient_sex, image.study.patient_age_years, image.view_position) == (
            group[0].patient_sex, group[0].patient_age_years, group[0].view_position)  # fmt: skip
        assert group[0].patient_sex in ("M", "F") and group[0].view_position in ("PA", "AP")
    # a second group overlapping the first imports only what is new
    sent2 = failure_cases.send(ctx, actor, info, sc.items[1:4], name="fn-check-2", readers={"ann": False},
                               findings=["Mass"])  # fmt: skip
    assert sent2.task.n_images == 3 and _images(ctx) == 4
    ids, problems = failure_cases.stored_image_ids(ctx, info, group, actor.user_id)
    assert problems == [] and len(set(ids.values())) == 3 and _images(ctx) == 4
    with pytest.raises(labelling.TaskError, match="exists already"):
        failure_cases.send(ctx, actor, info, group, name="fn-check", readers={"ann": False}, findings=["Mass"])
    with pytest.raises(labelling.TaskError, match="researchers do not label"):
        failure_cases.send(ctx, actor, info, group, name="x", readers={"res": False}, findings=["Mass"])


def test_the_group_csv_names_the_set_and_the_model(world):
    ctx, runner, info, sc, _ = world
    text = failure_cases.group_csv(info, sc.items[:2], sc).decode()
    assert f"weights sha256 {sc.spec.weights_sha256}" in text and "Research use only" in text
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    assert [r["file"] for r in rows] == FILES[:2] and rows[0]["Finding Labels"] == "Cardiomegaly"
    assert float(rows[0]["score Cardiomegaly"]) == pytest.approx(sc.scores[0, sc.findings.index("Cardiomegaly")])


def test_a_database_set_sends_its_stored_images_and_names_a_deleted_one(ctx):
    import datetime as dt

    info = eval_sets.SetInfo(1, "db", 1, "0" * 64, "database", "verdicts", None, ["Mass"], 2, [], None,
                             dt.datetime.now(dt.UTC))  # fmt: skip
    kept = dataclasses.replace(_item(1, True), file_name=None, image_id=7)
    deleted = dataclasses.replace(_item(2, False), file_name=None, image_id=None)
    ids, problems = failure_cases.stored_image_ids(ctx, info, [kept, deleted], 1)
    assert ids == {1: 7} and problems == [{"item": "set item 2", "reason": "image no longer in the store"}]
    assert _images(ctx) == 0  # nothing imported for a database set
