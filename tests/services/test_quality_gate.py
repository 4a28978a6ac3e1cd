"""The quality gate on real images of each kind from the shared data (only images the shipped gate did not train
on), its wiring into services.analysis (refused: nothing else runs; an override with its reason is stored and
audited, then the results show) and `cxr-review infer` (a lateral film: the gate's reasons, no findings, boxes
or CTR), and "quality not checked" when the gate model is missing."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from db import accounts, audit, repo
from db import engine as dbe
from db.models import GateOverride, Prediction, Role
from inference.registry import Registry
from inference.runner import Runner
from services import analysis, context, gate_overrides, gate_training, importer, infer, settings
from viewer import dicom_io

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("CXR_REVIEW_MODELS_DIR", REPO.parent / "shared" / "models")).resolve()


@pytest.fixture(scope="module")
def runner():
    if not (MODELS / "cxr15_mobilenetv3small_nih_float_from_int8.pt").is_file():
        pytest.skip(f"model weights not in {MODELS} (set CXR_REVIEW_MODELS_DIR)")
    return Runner(Registry(MODELS), "cpu")


@pytest.fixture(scope="module")
def held_out(shared_data, runner):
    """{figures row: [paths]} of the sources the shipped gate did not train on (its own split, seed 0)."""
    seed = 0
    rows: dict[str, list[str]] = {}
    for s in gate_training.collect(shared_data, made=0):
        if gate_training.held_out(s.group, seed):
            rows.setdefault(s.report, []).append(s.path)
    return rows


def verdicts(runner, paths):
    out = []
    for p in paths:
        try:
            x = analysis.model_input(dicom_io.load(p))
        except dicom_io.ImageRejected:
            continue
        out.append(runner.quality_gate(x))
    return out


def test_the_shipped_gate_is_a_trained_version_with_its_held_out_figures(runner):
    spec = runner.registry.for_task("quality_gate")
    assert spec.directory and Path(spec.directory).is_relative_to(REPO / "assets" / "models")
    assert runner.registry.problem(spec) is None  # weights present, sha256 as model.json says
    figures = spec.metrics
    assert figures["frontal_accepted"] >= 0.98 and figures["refused_all"] >= 0.95
    assert {"lateral (covid_followup)", "CT slice (covid_followup)", "frontal NIH", "frontal JSRT"} <= set(
        figures["per_kind"]
    )


def test_held_out_frontal_films_pass(runner, held_out):
    for row in ("frontal NIH", "frontal JSRT"):
        got = verdicts(runner, held_out[row])
        accepted = sum(v.passed for v in got) / len(got)
        assert len(got) >= 50 and accepted >= 0.97, (row, accepted)
        assert all(v.reasons == [] for v in got if v.passed)


def test_held_out_laterals_and_ct_slices_are_refused_with_the_reason(runner, held_out):
    for row, word in (("lateral (covid_followup)", "lateral"), ("CT slice (covid_followup)", "CT")):
        got = verdicts(runner, held_out[row])
        assert got and all(not v.passed for v in got), row
        named = sum(word in v.reasons[0] for v in got) / len(got)
        assert named >= 0.75, (row, [v.reasons for v in got])


def test_a_leg_radiograph_a_photograph_and_the_image_stored_inverted_are_refused(runner, shared_data):
    import importlib.util

    store = Path(importlib.util.find_spec("data_store").submodule_search_locations[0]) / "data"
    sk = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets" / "images"
    leg, photo = store / "RG3_UNCR.dcm", sk / "china.jpg"  # both held out: RG3 always, china by its hash
    inverted = shared_data / "nih" / "images" / "00017999_000.png"  # stored inverted; its patient held out
    got = verdicts(runner, [leg, photo, inverted])
    assert [v.passed for v in got] == [False, False, False]
    assert "inverted" in got[2].reasons[0]


def test_a_frontal_film_turned_or_cut_down_is_refused(runner, held_out):
    paths = held_out["frontal JSRT"][:20]
    pics = [analysis.model_input(dicom_io.load(p)) for p in paths]
    upright = [runner.quality_gate(x).passed for x in pics]
    turned = [runner.quality_gate(np.ascontiguousarray(np.rot90(x))) for x in pics]
    upside = [runner.quality_gate(np.ascontiguousarray(x[::-1])) for x in pics]
    corner = [
        runner.quality_gate(np.ascontiguousarray(x[: x.shape[0] // 2, : x.shape[1] // 2])) for x in pics
    ]
    inverted = [runner.quality_gate(1.0 - x) for x in pics]
    assert sum(upright) >= 19
    for name, got in (("rot90", turned), ("upside down", upside), ("corner", corner), ("inverted", inverted)):
        assert sum(not v.passed for v in got) >= 19, name
    assert sum("rotated" in v.reasons[0] for v in turned) >= 15
    assert sum("inverted" in v.reasons[0] for v in inverted) >= 19


# -- analysis: refused, overridden, not checked ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx(tmp_path_factory, runner):
    data = tmp_path_factory.mktemp("data")
    s = settings.load(
        {"CXR_REVIEW_DATA_DIR": str(data), "CXR_REVIEW_MODELS_DIR": str(MODELS), "CXR_REVIEW_SETTINGS": ""}
    )
    dbe.upgrade(s.db_url)
    c = context.build(s)
    return c


@pytest.fixture(scope="module")
def rad(ctx) -> int:
    return dbe.write(ctx.engine, lambda s: accounts.add_user(s, "rad", "x", Role.radiologist).id)


def _imported(ctx, path) -> dict:
    (res,) = importer.import_paths(ctx.engine, ctx.store, [path], max_bytes=2**30)
    with dbe.read(ctx.engine) as s:
        im = repo.image_by_sop(s, res.sop_instance_uid)
        return {"id": im.id, "pixel_sha256": im.pixel_sha256, "file_sha256": im.file_sha256, "view": None}


def _lateral(shared_data) -> Path:
    return Path(gate_training.held_out_paths(shared_data, "lateral (covid_followup)")[0])


def test_a_refused_image_gets_no_ai_output_until_a_reader_overrides_with_a_reason(
    ctx, runner, rad, shared_data
):
    image = _imported(ctx, _lateral(shared_data))
    first = analysis.analyse(ctx, runner, image, reader_id=rad)
    assert first.gate["passed"] is False and "lateral" in first.gate["reasons"][0]
    assert first.gate["model"]["id"] == "quality_gate" and len(first.gate["model"]["weights_sha256"]) == 64
    assert first.withheld and first.findings is None and first.anatomy is None and first.bone is None
    with dbe.read(ctx.engine) as s:  # only the gate ran and was stored
        assert [p.task for p in s.scalars(select(Prediction))] == ["quality_gate"]
    # Stored: a second look reads it and runs nothing.
    again = analysis.analyse_cached(ctx, runner, image, rad)
    assert again is not None and again.withheld and again.gate == first.gate

    with pytest.raises(gate_overrides.OverrideNotSaved, match="reason"):
        gate_overrides.record(ctx.engine, image["id"], rad, first.gate, "   ")
    gate_overrides.record(ctx.engine, image["id"], rad, first.gate, "frontal enough for me")
    shown = analysis.analyse(ctx, runner, image, reader_id=rad)
    assert not shown.withheld and shown.gate_override.reason == "frontal enough for me"
    assert shown.findings is not None and shown.anatomy is not None
    assert analysis.analyse_cached(ctx, runner, image).withheld  # another reader (or none): still refused
    with dbe.read(ctx.engine) as s:
        (row,) = s.scalars(select(GateOverride)).all()
        assert (row.image_id, row.user_id, row.model_id, row.reason) == (
            image["id"],
            rad,
            "quality_gate",
            "frontal enough for me",
        )
        assert "lateral" in json.loads(row.gate_reasons)[0]
        (event,) = audit.events(s, actions=("gate_overridden",))
        details = json.loads(event.details)
        assert event.actor == "rad" and details["override_id"] == row.id and "frontal enough" not in event.details


def test_a_passed_image_runs_every_model_and_says_so(ctx, runner, rad, shared_data):
    image = _imported(ctx, shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm")
    res = analysis.analyse(ctx, runner, image)
    assert res.gate["passed"] is True and res.gate["reasons"] == [] and not res.withheld
    assert res.findings is not None and res.anatomy is not None
    with pytest.raises(gate_overrides.OverrideNotSaved, match="did not refuse"):
        gate_overrides.record(ctx.engine, image["id"], rad, res.gate, "no need")


def test_a_missing_gate_model_says_quality_not_checked_everywhere(tmp_path, shared_data):
    no_gate = Runner(Registry(MODELS, trained_roots=[]), "cpu")
    s = settings.load(
        {
            "CXR_REVIEW_DATA_DIR": str(tmp_path),
            "CXR_REVIEW_MODELS_DIR": str(MODELS),
            "CXR_REVIEW_SETTINGS": "",
        }
    )
    dbe.upgrade(s.db_url)
    c = context.build(s)
    res = analysis.analyse(c, no_gate, _imported(c, _lateral(shared_data)))
    assert res.gate["passed"] is None and res.gate["reasons"][0].startswith("quality not checked: ")
    assert res.findings is not None and not res.withheld  # shown, but not silently as if checked
    out = tmp_path / "out"
    (line,) = infer.infer_paths(no_gate, [_lateral(shared_data)], out, max_bytes=2**30)
    doc = json.loads(Path(line.out).read_text())
    assert doc["quality_gate"]["passed"] is None and doc["quality_gate"]["model"] is None
    assert doc["quality_gate"]["reasons"][0].startswith("quality not checked")
    assert doc["findings"] and "quality_gate" in doc["unavailable"]


def test_infer_on_a_lateral_film_writes_the_refusal_and_no_findings(runner, shared_data, tmp_path):
    lateral = _lateral(shared_data)
    frontal = shared_data / "jsrt" / "images512" / "JPCNN001.png"
    cv2.imwrite(str(tmp_path / "frontal.png"), cv2.imread(str(frontal), cv2.IMREAD_GRAYSCALE))
    lines = list(
        infer.infer_paths(runner, [lateral, tmp_path / "frontal.png"], tmp_path / "out", max_bytes=2**30)
    )
    refused, passed = (json.loads(Path(line.out).read_text()) for line in lines)
    gate = refused["quality_gate"]
    assert gate["passed"] is False and "lateral" in gate["reasons"][0]
    assert set(gate["model"]) >= {"id", "version", "weights_sha256"} and gate["model"]["id"] == "quality_gate"
    assert refused["findings"] is None and refused["boxes"] is None and refused["ctr"] is None
    assert [m["task"] for m in refused["models"]] == ["quality_gate"]
    assert passed["quality_gate"]["passed"] is True and passed["quality_gate"]["reasons"] == []
    assert passed["findings"] and passed["anatomy_mask"]


def test_train_gate_writes_a_version_the_registry_serves_with_its_held_out_figures(shared_data, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "models"
    r = subprocess.run(
        [sys.executable, "-m", "services.cli", "train", "gate", "--shared", str(shared_data), "--out", str(out),
         "--epochs", "1", "--threads", "1", "--version", "0.0.1"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    meta = json.loads((out / "quality_gate" / "0.0.1" / "model.json").read_text())
    assert meta["weights_sha256"] == summary["weights_sha256"] and meta["task"] == "quality_gate"
    assert meta["data"]["n_train"] > 0 and meta["data"]["n_held_out"] > 0
    rows = meta["validation"]["per_kind"]
    assert rows["lateral (covid_followup)"]["n"] == len(gate_training.held_out_paths(shared_data, "lateral (covid_followup)"))
    spec = Registry(MODELS, trained_roots=[out]).check("quality_gate@0.0.1")  # sha256 checked
    assert spec.thresholds == {"frontal": 0.5} and spec.labels[0] == "frontal"


def test_frontal_films_from_sources_it_never_saw_pass_and_a_mislabelled_monochrome1_file_is_refused(
    runner, shared_data
):
    # TBX11K and the bone-suppression pairs are not in the gate's data at all.
    unseen = sorted((shared_data / "tbx11k" / "imgs").rglob("*.png")) + sorted(
        (shared_data / "bone_pairs" / "authentic").glob("*.jpg")
    )
    got = verdicts(runner, unseen)
    assert len(got) >= 10 and all(v.passed for v in got), [v.reasons for v in got]
    # The same pixels as a PA film, tagged MONOCHROME1: displayed (and seen by the models) inverted.
    (mono1,) = verdicts(runner, [shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono1_variant.dcm"])
    assert not mono1.passed and "inverted" in mono1.reasons[0]


def test_an_ai_export_skips_a_refused_image_with_the_gate_reason(ctx, runner, shared_data):
    from services import exports

    second_lateral = gate_training.held_out_paths(shared_data, "lateral (covid_followup)")[1]
    item = exports._ai_item(ctx, runner, _imported(ctx, second_lateral))
    assert item.readings == [] and item.skipped.startswith("refused by the quality gate: lateral view")
