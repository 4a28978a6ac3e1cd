"""services.analysis on a real imported study, a real SQLite file and the real models; services.reporting on the
verdicts a reader stores. The models run once per module (about a second on CPU)."""

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, event, func, select

from db import accounts, repo
from db import engine as dbe
from db.models import Prediction, PredictionItem, Role
from inference.postprocess import LUNGS, clip_to_mask
from inference.registry import Registry
from inference.runner import Runner
from services import analysis, context, gate_overrides, importer, reporting, settings
from viewer import dicom_io

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("CXR_REVIEW_MODELS_DIR", REPO.parent / "shared" / "models")).resolve()
# the version of each task that runs without an admin's choice (chosen on evidence, assets/models/evidence)
MODEL_IDS = tuple(Registry(MODELS).for_task(t).model_id for t in ("segmentation", "bone_suppression", "classification"))


def _count(ctx) -> int:
    with dbe.read(ctx.engine) as s:
        return s.scalar(select(func.count()).select_from(Prediction))


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    if not (MODELS / "bone_suppression_kalisz_ae_torch.pt").is_file():
        pytest.skip(f"model weights not in {MODELS} (set CXR_REVIEW_MODELS_DIR)")
    data = tmp_path_factory.mktemp("data")
    s = settings.load(
        {"CXR_REVIEW_DATA_DIR": str(data), "CXR_REVIEW_MODELS_DIR": str(MODELS), "CXR_REVIEW_SETTINGS": ""}
    )
    dbe.upgrade(s.db_url)
    return context.build(s)


@pytest.fixture(scope="module")
def runner(ctx):
    return Runner(Registry(ctx.settings.models_dir), "cpu")


@pytest.fixture(scope="module")
def study(ctx, shared_data):
    path = shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"
    res = importer.import_file(ctx.engine, ctx.store, path, max_bytes=50 * 2**20)
    assert res.status == "imported"
    with dbe.read(ctx.engine) as s:
        im = repo.image_by_sop(s, res.sop_instance_uid)
        image = {"id": im.id, "pixel_sha256": im.pixel_sha256, "file_sha256": im.file_sha256, "view": None}
        return {
            "study_id": res.study_id,
            "image": image,
            "rows": im.rows,
            "columns": im.columns,
            "path": path,
        }


@pytest.fixture(scope="module")
def first(ctx, runner, study):
    before = _count(ctx)
    assert analysis.analyse_cached(ctx, runner, study["image"]) is None  # nothing stored yet, nothing run
    assert _count(ctx) == before == 0
    return analysis.analyse(ctx, runner, study["image"])


def test_first_analysis_runs_every_model_and_stores_one_row_each(ctx, first, study):
    assert sorted(first.computed_now) == sorted(MODEL_IDS) and first.unavailable == {}
    with dbe.read(ctx.engine) as s:
        rows = s.scalars(select(Prediction)).all()
        stored = {(r.pixel_sha256, r.model_id, r.model_version, r.weights_sha256): r.timings_ms for r in rows}
    assert first.gate["passed"] is True  # the quality gate ran first and is stored too
    expected = {
        (study["image"]["pixel_sha256"], m["id"], m["version"], m["weights_sha256"])
        for m in [*first.models, first.gate["model"]]
    }
    assert stored.keys() == expected and len(rows) == 4
    # The row's time is the model's total, counted once (not its phases added to the runner's total).
    for result in (first.anatomy, first.bone, first.findings):
        key = (study["image"]["pixel_sha256"], *result["model"].values())
        assert stored[key] == pytest.approx(result["timings_ms"]["total"])
        phases = [v for k, v in result["timings_ms"].items() if k not in ("total", "load")]
        assert sum(phases) <= result["timings_ms"]["total"] + 1e-6
    t = first.timings_ms
    assert set(t) == {*MODEL_IDS, "total"} and t["total"] == pytest.approx(sum(t[m] for m in MODEL_IDS))
    assert first.findings["timings_ms"]["gradcam_and_boxes"] > 0


def test_second_visit_computes_nothing_and_returns_the_same(ctx, runner, first, study):
    before = _count(ctx)
    again = analysis.analyse_cached(ctx, runner, study["image"])
    assert again is not None and again.computed_now == [] and _count(ctx) == before
    assert again.findings["probabilities"] == first.findings["probabilities"]
    assert again.findings["boxes"] == first.findings["boxes"]
    assert (
        again.anatomy["ctr"] == first.anatomy["ctr"]
        and again.anatomy["label_map"] == first.anatomy["label_map"]
    )
    assert again.bone["soft_tissue"] == first.bone["soft_tissue"]
    assert again.timings_ms == first.timings_ms
    # analyse() itself finds everything stored too.
    assert analysis.analyse(ctx, runner, study["image"]).computed_now == [] and _count(ctx) == before


@contextlib.contextmanager
def _statements(engine):
    """The SQL statements sent while the block runs (SQLite: a write transaction starts "BEGIN IMMEDIATE")."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _writes(seen: list[str]) -> list[str]:
    writing = ("BEGIN", "INSERT", "UPDATE", "DELETE")
    return [q for q in seen if q.split()[0].upper() in writing and q != "BEGIN DEFERRED"]


def _stored_items(ctx, prediction_ids) -> dict[int, dict[tuple[str, str], tuple]]:
    with dbe.read(ctx.engine) as s:
        rows = s.scalars(select(PredictionItem).where(PredictionItem.prediction_id.in_(list(prediction_ids))))
        out: dict[int, dict[tuple[str, str], tuple]] = {}
        for r in rows:
            out.setdefault(r.prediction_id, {})[(r.kind, r.key)] = (r.id, r.label, r.score, r.geometry)
        return out


def test_every_ai_statement_is_a_stored_item_with_a_stable_id(ctx, runner, first, study):
    results = {"classification": first.findings, "segmentation": first.anatomy, "bone_suppression": first.bone}
    assert set(first.prediction_ids) == set(results)
    stored = _stored_items(ctx, first.prediction_ids.values())
    for task, result in results.items():
        mine = stored[first.prediction_ids[task]]
        # stored with the prediction, exactly the items derived from its result, and handed to the viewer
        assert {k: v[1:] for k, v in mine.items()} == {
            (it["kind"], it["key"]): (it["label"], it["score"], it["geometry"])
            for it in analysis.prediction_items(task, result)
        }
        assert first.item_ids[task] == {k: v[0] for k, v in mine.items()}
    f = first.findings
    findings = {k: v for k, v in stored[first.prediction_ids["classification"]].items() if k[0] == "finding"}
    assert {k[1]: v[2] for k, v in findings.items()} == pytest.approx(f["probabilities"])
    classification = stored[first.prediction_ids["classification"]]
    boxes = {k[1]: json.loads(v[3]) for k, v in classification.items() if k[0] == "box"}
    assert len(boxes) == sum(map(len, f["boxes"].values())) > 0
    label = next(k for k, v in f["boxes"].items() if v)
    assert boxes[f"{label}#0"] == {k: f["boxes"][label][0][k] for k in ("x", "y", "w", "h")}
    anatomy = stored[first.prediction_ids["segmentation"]]
    assert {k: v[2] for k, v in anatomy.items() if k[0] == "anatomy"} == pytest.approx(
        {("anatomy", name): frac for name, frac in first.anatomy["area_fraction"].items()}
    )
    assert anatomy[("ctr", "ctr")][2] == pytest.approx(first.anatomy["ctr"]["ratio"])
    assert list(stored[first.prediction_ids["bone_suppression"]]) == [("bone_suppression", "bone_suppression")]

    # A revisit (and a second analyse) reads the same ids and writes nothing.
    with _statements(ctx.engine) as seen:
        again = analysis.analyse_cached(ctx, runner, study["image"])
        assert analysis.analyse(ctx, runner, study["image"]).item_ids == first.item_ids
    assert again.item_ids == first.item_ids and _writes(seen) == []
    assert _stored_items(ctx, first.prediction_ids.values()) == stored


def test_predictions_stored_before_items_get_them_in_one_write_on_their_first_view(ctx, runner, first, study):
    # The same results stored, as before items existed, for other pixels: no items yet.
    older = {"pixel_sha256": "e" * 64, "file_sha256": study["image"]["file_sha256"], "view": None}

    def copy(s):
        # every stored result of the study's pixels, the quality gate's included
        for row in s.scalars(select(Prediction).where(Prediction.pixel_sha256 == study["image"]["pixel_sha256"])):
            s.add(Prediction(pixel_sha256=older["pixel_sha256"], model_id=row.model_id,
                             model_version=row.model_version, weights_sha256=row.weights_sha256, task=row.task,
                             device=row.device, timings_ms=row.timings_ms, result=row.result))  # fmt: skip

    dbe.write(ctx.engine, copy)
    try:
        with _statements(ctx.engine) as seen:
            shown = analysis.analyse_cached(ctx, runner, older)
        writes = _writes(seen)
        assert writes[0] == "BEGIN IMMEDIATE" and writes.count("BEGIN IMMEDIATE") == 1  # one transaction
        assert all(q.startswith("INSERT INTO prediction_items") for q in writes[1:])
        assert shown.computed_now == [] and set(shown.item_ids) == set(first.item_ids)
        # the same statements as the results stored with items, under ids of their own
        assert {t: set(ids) for t, ids in shown.item_ids.items()} == {t: set(ids) for t, ids in first.item_ids.items()}
        stored = _stored_items(ctx, shown.prediction_ids.values())
        ids = {t: {k: v[0] for k, v in stored[pid].items()} for t, pid in shown.prediction_ids.items()}
        assert ids == shown.item_ids
        # ...and never again.
        with _statements(ctx.engine) as seen:
            again = analysis.analyse_cached(ctx, runner, older)
        assert _writes(seen) == [] and again.item_ids == shown.item_ids
    finally:
        # (its items go with it: ON DELETE CASCADE)
        dbe.write(ctx.engine, lambda s: s.execute(delete(Prediction).where(Prediction.pixel_sha256 == "e" * 64)))


def test_the_thresholds_in_force_come_with_the_stored_results(ctx, runner, first, study, reader):
    m = first.findings["model"]
    assert first.thresholds == first.findings["default_thresholds"]
    dbe.write(ctx.engine, lambda s: repo.set_threshold(s, m["id"], m["version"], "Effusion", 0.321, reader))
    try:
        again = analysis.analyse_cached(ctx, runner, study["image"])
        assert again.thresholds["Effusion"] == pytest.approx(0.321)
        assert {k: v for k, v in again.thresholds.items() if k != "Effusion"} == {
            k: v for k, v in first.findings["default_thresholds"].items() if k != "Effusion"
        }
    finally:
        dbe.write(ctx.engine, lambda s: repo.reset_thresholds(s, m["id"], m["version"]))


def test_overlays_are_at_full_resolution_and_boxes_inside_the_image(ctx, first, study):
    rows, cols = study["rows"], study["columns"]
    label_map = analysis.label_map(ctx, first.anatomy)
    assert label_map.shape == (rows, cols) and set(np.unique(label_map)) <= {0, 1, 2, 3}
    assert 0.15 <= first.anatomy["area_fraction"]["lungs"] <= 0.6
    assert 0.35 <= first.anatomy["ctr"]["ratio"] <= 0.65
    assert analysis.stored_png(ctx, first.bone["soft_tissue"]).shape == (rows, cols)
    f = first.findings
    assert set(f["heatmaps"]) == set(f["probabilities"]) - {"No Finding"} and f["heatmaps_clipped_to_lungs"]
    assert any(f["boxes"].values())
    for boxes in f["boxes"].values():
        for b in boxes:
            assert 0 <= b["x"] and 0 <= b["y"] and b["w"] > 0 and b["h"] > 0
            assert b["x"] + b["w"] <= cols and b["y"] + b["h"] <= rows


def test_one_gradcam_pass_gives_the_per_label_heatmaps(ctx, runner, first, study):
    """The heatmaps from the single pass equal what one Grad-CAM per label gives."""
    x = analysis.model_input(dicom_io.load(study["path"]))
    lungs = analysis.label_map(ctx, first.anatomy) == LUNGS
    for label in ("Cardiomegaly", "Effusion"):
        alone = np.round(clip_to_mask(runner.gradcam(x, label), lungs) * 255).astype(np.uint8)
        stored = analysis.stored_png(ctx, first.findings["heatmaps"][label])
        assert np.abs(stored.astype(int) - alone).max() <= 1


def test_a_missing_model_is_reported_and_the_others_chosen(tmp_path):
    for f in MODELS.glob("*.pt"):
        if not f.name.startswith("bone"):
            (tmp_path / f.name).symlink_to(f)
    chosen, unavailable = analysis.specs_for(Registry(tmp_path, trained_roots=[]))
    assert set(chosen) == {"segmentation", "classification"}
    assert unavailable.keys() == {"bone_suppression_ae"} and "not found" in unavailable["bone_suppression_ae"]


# --- draft report ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reader(ctx):
    return dbe.write(ctx.engine, lambda s: accounts.add_user(s, "reader1", "x", Role.radiologist).id)


def _verdicts(ctx, first, study, reader, decisions: dict[tuple[str, str], str]):
    models = {"finding": first.findings["model"], "ctr": first.anatomy["model"]}

    def tx(s):
        for (kind, key), decision in decisions.items():
            m = models[kind]
            repo.upsert_verdict(s, repo.VerdictIn(
                study_id=study["study_id"], image_id=study["image"]["id"], reader_id=reader, item_kind=kind,
                item_key=key, decision=decision, model_id=m["id"], model_version=m["version"],
                weights_sha256=m["weights_sha256"],
            ))  # fmt: skip

    dbe.write(ctx.engine, tx)
    with dbe.read(ctx.engine) as s:
        return reporting.accepted(repo.verdicts_of(s, study["image"]["id"], reader), first)


def test_report_has_accepted_findings_in_reporting_order_and_nothing_else(ctx, first, study, reader):
    accepted = _verdicts(ctx, first, study, reader, {
        ("finding", "Cardiomegaly"): "accept", ("finding", "Nodule"): "accept", ("finding", "Effusion"): "reject",
        ("finding", "Pneumothorax"): "uncertain", ("ctr", "ctr"): "accept",
    })  # fmt: skip
    assert accepted == {("finding", "Cardiomegaly"), ("finding", "Nodule"), ("ctr", "ctr")}
    text = reporting.draft(first, accepted, "AP")
    findings, impression = text.split("IMPRESSION:")
    lines = findings.replace("FINDINGS:", "").strip().splitlines()
    # Lungs before heart, whatever order the verdicts came in; rejected and uncertain items are not findings.
    assert lines[0] == "Lungs: Pulmonary nodule."
    ratio = first.anatomy["ctr"]["ratio"]
    assert lines[1].startswith(
        "Heart and mediastinum: The heart is enlarged. Cardiothoracic ratio " + f"{ratio:.2f}"
    )
    assert "AP projection" in lines[1]
    assert "effusion" not in text.lower() and "pneumothorax" not in text.lower()
    assert impression.strip().splitlines()[0] == "Pulmonary nodule; The heart is enlarged"
    assert "research-use-only" in text


def test_report_of_a_normal_study_and_of_no_accepted_statement(ctx, first, study, reader):
    assert "No AI statement accepted yet." in reporting.draft(first, set(), "PA")
    normal = reporting.draft(first, {("finding", "No Finding")}, "PA")
    assert "No acute cardiopulmonary abnormality." in normal
    # A verdict on another model version's output does not count for these results.
    other = first.findings["model"] | {"version": "0.0.1"}

    class V:
        item_kind, item_key, decision, model_id, model_version = (
            "finding",
            "Mass",
            "accept",
            other["id"],
            other["version"],
        )

    assert reporting.accepted([V()], first) == set()


def test_implausible_outlines_withhold_the_ctr_from_the_report(ctx, runner, first, study, reader):
    assert first.anatomy["problems"] == [] and analysis.ctr_shown(first.anatomy) == first.anatomy["ctr"]
    accepted = {("ctr", "ctr")}
    assert "Cardiothoracic ratio" in reporting.draft(first, accepted, "PA")
    bad = dataclasses.replace(first, anatomy=first.anatomy | {"problems": ["one lung field only"]})
    assert analysis.ctr_shown(bad.anatomy) is None
    assert "Cardiothoracic ratio" not in reporting.draft(bad, accepted, "PA")


def test_results_stored_before_the_plausibility_checks_get_them_on_reading(ctx, runner, first, study):
    def drop_problems(s):
        row = s.scalars(select(Prediction).where(Prediction.model_id == first.anatomy["model"]["id"])).one()
        stored = json.loads(row.result)
        del stored["problems"]
        row.result = json.dumps(stored)

    dbe.write(ctx.engine, drop_problems)
    again = analysis.analyse_cached(ctx, runner, study["image"])
    assert again.anatomy["problems"] == [] and again.computed_now == []
    assert again.anatomy["inverted_grey_scale"] is False  # plausible outlines: nothing to check again


def test_an_image_stored_with_an_inverted_grey_scale_is_recognised(runner, shared_data):
    # A real NIH sample image stored inverted (bright air, dark bone): its outlines are implausible and become
    # plausible on the inverted grey scale. The same image the right way round passes with no second run.
    spec = runner.registry.check("anatomy_unet_jsrt")
    x = analysis.model_input(dicom_io.load(shared_data / "nih" / "images" / "00017625_000.png"))
    label_map, summary, ms = analysis.checked_anatomy(runner, x, spec)
    assert summary["problems"] and summary["inverted_grey_scale"] is True
    assert summary["inversion_checked_with"] == [spec.provenance()]  # the model itself saw the chest
    assert label_map.shape == x.shape and ms["total"] > ms["inversion_check"] > 0  # the second run is counted
    label_map, summary, ms = analysis.checked_anatomy(runner, 1.0 - x, spec)
    assert summary["problems"] == [] and summary["inverted_grey_scale"] is False
    assert summary["inversion_checked_with"] == [] and "inversion_check" not in ms
    # Our 1.3.0 sees no chest in this paediatric AP film either way, nor does the default (1.3.0 with one
    # view); the built-in anatomy model, asked last, does, and the result names all three.
    ours = runner.registry.check("anatomy_unet_smp@1.3.0")
    default = runner.registry.for_task("segmentation")
    assert default.ref == "anatomy_unet_smp@1.3.0+1view"
    summary = analysis.checked_anatomy(runner, x, ours)[1]
    assert summary["inverted_grey_scale"] is True
    assert summary["inversion_checked_with"] == [ours.provenance(), default.provenance(), spec.provenance()]


def test_inverted_images_are_flagged_when_analysed_and_in_results_stored_before_the_check(
    runner, tmp_path, shared_data
):
    s = settings.load({"CXR_REVIEW_DATA_DIR": str(tmp_path), "CXR_REVIEW_MODELS_DIR": str(MODELS),
                       "CXR_REVIEW_SETTINGS": ""})  # fmt: skip
    dbe.upgrade(s.db_url)
    own = context.build(s)
    png = shared_data / "nih" / "images" / "00017625_000.png"
    res = importer.import_file(own.engine, own.store, png, max_bytes=2**30)
    with dbe.read(own.engine) as db:
        im = repo.image_by_sop(db, res.sop_instance_uid)
        image = {"id": im.id, "pixel_sha256": im.pixel_sha256, "file_sha256": im.file_sha256, "view": None}
    # The quality gate refuses it first; a reader who overrides it sees the anatomy check's verdict too.
    refused = analysis.analyse(own, runner, image)
    assert refused.withheld and refused.anatomy is None and "inverted" in refused.gate["reasons"][0]
    reader = dbe.write(own.engine, lambda db: accounts.add_user(db, "reader", "x", Role.radiologist).id)
    gate_overrides.record(own.engine, image["id"], reader, refused.gate, "to see the anatomy check")
    assert analysis.analyse(own, runner, image, reader_id=reader).anatomy["inverted_grey_scale"] is True

    def drop_flag(db):
        row = db.scalars(select(Prediction).where(Prediction.task == "segmentation")).one()
        row.result = json.dumps(
            {k: v for k, v in json.loads(row.result).items() if k != "inverted_grey_scale"}
        )

    dbe.write(own.engine, drop_flag)
    analysis._INVERTED_ON_READING.clear()
    again = analysis.analyse_cached(own, runner, image, reader)
    assert again.computed_now == [] and again.anatomy["inverted_grey_scale"] is True


def test_the_viewer_flags_findings_by_the_rule_no_finding_never_beside_a_positive_finding():
    from services.analysis import Analysis, flagged

    result = Analysis(findings={"probabilities": {"No Finding": 0.010, "Mass": 0.02, "Effusion": 0.001}})
    result.thresholds = {"No Finding": 0.005, "Mass": 0.012, "Effusion": 0.01}
    assert flagged(result) == {"No Finding": False, "Mass": True, "Effusion": False}
    result.thresholds = {"No Finding": 0.005, "Mass": 0.5, "Effusion": 0.01}
    assert flagged(result) == {"No Finding": True, "Mass": False, "Effusion": False}
    assert flagged(Analysis()) == {}


def test_a_version_without_no_finding_drafts_a_normal_report_when_every_flag_is_rejected():
    from services.analysis import Analysis

    model = {"id": "cxr14_mobilenetv3_multilabel", "version": "1.3.0", "weights_sha256": "x" * 64}
    result = Analysis(findings={"model": model, "probabilities": {"Effusion": 0.4, "Mass": 0.01}},
                      thresholds={"Effusion": 0.1, "Mass": 0.1})  # fmt: skip
    assert "No AI statement accepted yet." in reporting.draft(result, set(), "PA", set())
    normal = reporting.draft(result, set(), "PA", {("finding", "Effusion")})  # the one flag rejected
    assert "No acute cardiopulmonary abnormality." in normal and "No acute abnormality." in normal
    # a version with a "No Finding" label needs it accepted, as before
    result.findings["probabilities"]["No Finding"] = 0.2
    assert "No acute" not in reporting.draft(result, set(), "PA", {("finding", "Effusion")})
