"""`cxr-review annotations import|agreement`, `tasks` and `export` as subprocesses on a real SQLite file with real
images: per-row reports and one transaction per file, agreement JSON, and exports read back (CSV, COCO, DICOM
SEG and SR through highdicom and pydicom, validated by dciodvfy where it is installed)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import text

from db import engine as dbe
from services import annotations, context, exports, settings
from services.auth import SignedIn

CLI = [sys.executable, "-m", "services.cli"]
PNGS = ("00000075_000.png", "00000100_000.png", "00000211_000.png", "00000284_000.png")
DICOM = "siim_cr_chest_pa_1024_jpeg_mono2.dcm"


def run(env, *args):
    p = subprocess.run(
        [*CLI, *map(str, args)], env=os.environ | env, capture_output=True, text=True, timeout=600
    )
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return p.returncode, lines, p.stderr


@pytest.fixture
def world(app_env, shared_data, tmp_path):
    env = app_env | {"ADMIN_PW": "boss-password-long"}
    assert run(env, "db", "upgrade")[0] == 0
    assert run(env, "users", "add", "boss", "--role", "admin", "--password-env", "ADMIN_PW")[0] == 0
    files = [shared_data / "nih" / "images" / n for n in PNGS] + [shared_data / "dicom" / DICOM]
    code, lines, _ = run(env, "import", *files)
    assert code == 0, lines
    ctx = context.build(settings.load(app_env))
    with dbe.read(ctx.engine) as s:
        images = {
            r.original_filename: r
            for r in s.execute(
                text("SELECT id, original_filename, sop_instance_uid, pixel_sha256 FROM images")
            )
        }
    return env, ctx, images, tmp_path


def _versions(ctx) -> int:
    with dbe.read(ctx.engine) as s:
        return s.scalar(text("SELECT count(*) FROM annotation_versions"))


def _write_csv(path, rows, header=("image", "Finding Labels")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_import_applies_a_good_file_and_nothing_of_a_bad_one(world):
    env, ctx, images, tmp = world
    good = _write_csv(tmp / "good.csv", [
        ("00000075_000.png", "Effusion|Mass"),  # by the file name it was imported from
        (images[DICOM].sop_instance_uid, "No Finding"),  # by SOP Instance UID
        (images["00000100_000.png"].pixel_sha256, "Cardiomegaly"),  # by pixel sha256
    ])  # fmt: skip
    code, lines, _ = run(env, "annotations", "import", good, "--reader", "ann")
    assert code == 0 and [r["status"] for r in lines] == ["applied"] * 3
    assert _versions(ctx) == 3
    with dbe.read(ctx.engine) as s:
        assert s.scalar(text("SELECT role FROM users WHERE username = 'ann'")) == "annotator"  # created
    v = annotations.head(ctx, images["00000075_000.png"].id, None, _uid(ctx, "ann"))
    assert (
        v.status == "submitted" and v.labels["Effusion"] == "present" and v.labels["Atelectasis"] == "absent"
    )
    assert v.labels["No Finding"] == "absent"

    bad = _write_csv(tmp / "bad.csv", [
        ("00000211_000.png", "Effusion"),
        ("00000284_000.png", "Pneumonitis"),
        ("not-here.png", "Mass"),
    ])  # fmt: skip
    code, lines, _ = run(env, "annotations", "import", bad, "--reader", "ann")
    assert code == 1
    assert [r["status"] for r in lines] == ["rejected"] * 3
    assert "not applied: another row of this file was rejected" in lines[0]["reason"]
    assert "unknown finding 'Pneumonitis'" in lines[1]["reason"] and lines[1]["where"] == "row 3"
    assert "image 'not-here.png' is not stored" in lines[2]["reason"]
    assert _versions(ctx) == 3  # nothing of the bad file

    unknown = _write_csv(
        tmp / "cols.csv", [("00000211_000.png", "Effusion", "x")], ("image", "Finding Labels", "Grade")
    )
    code, lines, _ = run(env, "annotations", "import", unknown, "--reader", "ann")
    assert code == 1 and lines[0]["status"] == "rejected" and "unknown column(s) Grade" in lines[0]["reason"]
    missing = _write_csv(tmp / "missing.csv", [("00000211_000.png",)], ("image",))
    code, lines, _ = run(env, "annotations", "import", missing, "--reader", "ann")
    assert "needs the columns `image` and `Finding Labels`; this one has: image" in lines[0]["reason"]


def test_coco_import_reports_each_annotation(world):
    env, ctx, images, tmp = world
    doc = {
        "images": [{"id": 1, "file_name": "00000075_000.png"}, {"id": 2, "file_name": "elsewhere.png"}],
        "categories": [{"id": 1, "name": "Mass"}, {"id": 2, "name": "Tumour"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 40]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [500, 100, 50, 40]},
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [10, 10, 5, 5]},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [10, 10, 5, 5]},
        ],
    }
    path = tmp / "boxes.json"
    path.write_text(json.dumps(doc))
    code, lines, _ = run(env, "annotations", "import", path, "--reader", "ann")
    assert code == 1 and _versions(ctx) == 0
    reasons = {r["where"]: r["reason"] for r in lines}
    assert "not applied" in reasons["annotation 10"]
    assert "lies outside the 512x512 image" in reasons["annotation 11"]
    assert "unknown category 'Tumour'" in reasons["annotation 12"]
    assert "image 'elsewhere.png' is not stored" in reasons["annotation 13"]
    doc["annotations"] = doc["annotations"][:1]
    path.write_text(json.dumps(doc))
    code, lines, _ = run(env, "annotations", "import", path, "--reader", "ann")
    assert code == 0 and lines[0]["status"] == "applied"
    v = annotations.head(ctx, images["00000075_000.png"].id, None, _uid(ctx, "ann"))
    assert v.boxes == [{"label": "Mass", "x": 100.0, "y": 100.0, "w": 50.0, "h": 40.0}] and v.labels == {
        "Mass": "present"
    }


def _uid(ctx, name):
    with dbe.read(ctx.engine) as s:
        return s.scalar(text("SELECT id FROM users WHERE username = :n"), {"n": name})


def test_agreement_of_two_readers_equals_scikit_learn(world):
    env, ctx, images, tmp = world
    names = [*PNGS, DICOM]
    ann = ["Effusion", "Effusion|Mass", "No Finding", "Cardiomegaly", "Mass"]
    bob = ["Effusion", "Mass", "No Finding", "Cardiomegaly|Effusion", "No Finding"]
    run(
        env,
        "annotations",
        "import",
        _write_csv(tmp / "a.csv", zip(names, ann, strict=True)),
        "--reader",
        "ann",
    )
    run(
        env,
        "annotations",
        "import",
        _write_csv(tmp / "b.csv", zip(names, bob, strict=True)),
        "--reader",
        "bob",
    )
    code, [out], _ = run(env, "annotations", "agreement", "--readers", "ann,bob")
    assert code == 0 and out["method"] == "cohen" and out["n_images"] == 5
    for label in ("Effusion", "Mass", "No Finding"):
        a = [label in x.split("|") for x in ann]
        b = [label in x.split("|") for x in bob]
        assert out["findings"][label]["kappa"] == pytest.approx(cohen_kappa_score(a, b)), label
        assert out["findings"][label]["percent_agreement"] == pytest.approx(np.mean(np.equal(a, b)))
    assert out["findings"]["Atelectasis"]["kappa"] is None  # all absent: undefined, not 1 and not NaN
    assert out["most_disagreement"][0]["file"] in names
    code, _, err = run(env, "annotations", "agreement", "--readers", "ann,zoe")
    assert code == 2 and "zoe has no submitted annotations" in err


def _label_map(rows, cols):
    lm = np.zeros((rows, cols), np.uint8)
    lm[rows // 8 : rows * 3 // 4, cols // 8 : cols * 3 // 8] = 1
    lm[rows // 8 : rows * 3 // 4, cols * 5 // 8 : cols * 7 // 8] = 1
    lm[rows // 2 : rows * 3 // 4, cols * 3 // 8 : cols * 5 // 8] = 2
    lm[rows // 10 : rows // 8, cols // 8 : cols * 7 // 8] = 3
    return lm


def _dciodvfy_errors(path):
    if shutil.which("dciodvfy") is None:  # test_dciodvfy_is_installed says so where it matters
        return []
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr
    return [line for line in out.splitlines() if line.startswith("Error")]


def test_dciodvfy_is_installed():
    if os.geteuid() != 0 and shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools is missing and scripts/install.sh installs it only as root")
    assert shutil.which("dciodvfy"), "scripts/install.sh installs dicom3tools (dciodvfy) when run as root"


def test_seg_and_sr_exports_read_back_and_validate(world):
    env, ctx, images, tmp = world
    uid = _uid(ctx, "boss")
    boss = SignedIn(uid, "boss", "admin", False)
    maps = {}
    for name in ("00000075_000.png", DICOM):
        img = images[name]
        with dbe.read(ctx.engine) as s:
            rows, cols = s.execute(
                text("SELECT rows, columns FROM images WHERE id = :i"), {"i": img.id}
            ).one()
        maps[name] = _label_map(rows, cols)
        annotations.save(ctx, boss, img.id, status="submitted", label_map=maps[name],
                         labels={"Effusion": "present", "Mass": "absent", "Nodule": "uncertain"},
                         boxes=[{"label": "Effusion", "x": 10, "y": 20, "w": 100, "h": 80}])  # fmt: skip
    out = tmp / "seg"
    code, lines, err = run(env, "export", "--format", "seg", "--source", "reader:boss", "--out", out)
    assert code == 0, (lines, err)
    by_file = {r["file"]: r for r in lines}
    assert len(by_file[DICOM]["files"]) == 1  # the SEG, referencing the stored DICOM itself
    assert [f.split(".", 1)[1] for f in by_file["00000075_000.png"]["files"]] == ["sc.dcm", "seg.dcm"]
    for name, r in by_file.items():
        seg_path = out / r["files"][-1]
        seg = hd.seg.segread(seg_path)
        assert seg.SegmentationType == "BINARY"
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["lungs", "heart", "clavicles"]
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"
        np.testing.assert_array_equal(exports.label_map_of(seg_path), maps[name])
        assert pydicom.dcmread(seg_path).Modality == "SEG"
        assert _dciodvfy_errors(seg_path) == [], name
    src = pydicom.dcmread(out / by_file["00000075_000.png"]["files"][0])
    seg = pydicom.dcmread(out / by_file["00000075_000.png"]["files"][1])
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == src.SOPInstanceUID
    )
    assert _dciodvfy_errors(out / by_file["00000075_000.png"]["files"][0]) == []

    out = tmp / "sr"
    code, lines, err = run(env, "export", "--format", "sr", "--source", "reader:boss", "--out", out)
    assert code == 0, (lines, err)
    for r in lines:
        path = out / r["files"][-1]
        sr = hd.sr.srread(path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        dump = str(pydicom.dcmread(path))
        assert "Pleural effusion" in dump and "Present" in dump and "Absent" in dump
        assert "Nodule" not in dump  # uncertain: TID 1500 has no such value, so it is left out
        assert "POLYLINE" in dump and "boss" in dump
        assert _dciodvfy_errors(path) == [], r["file"]

    # A stored file gone from the store: that image is skipped with the reason, the other is exported.
    ctx.store.path_for(_file_sha(ctx, images[DICOM].id)).unlink()
    code, lines, _ = run(env, "export", "--format", "sr", "--source", "reader:boss", "--out", tmp / "again")
    assert code == 1
    by_file = {r["file"]: r for r in lines}
    assert (
        by_file[DICOM]["status"] == "skipped" and "missing from the image store" in by_file[DICOM]["reason"]
    )
    assert by_file["00000075_000.png"]["status"] == "exported"


def _file_sha(ctx, image_id):
    with dbe.read(ctx.engine) as s:
        return s.scalar(text("SELECT file_sha256 FROM images WHERE id = :i"), {"i": image_id})


def test_csv_and_coco_exports(world):
    env, ctx, images, tmp = world
    names = [*PNGS, DICOM]
    run(
        env,
        "annotations",
        "import",
        _write_csv(tmp / "a.csv", [(n, "Mass") for n in names]),
        "--reader",
        "ann",
    )
    coco = {"images": [{"id": 1, "file_name": PNGS[0]}], "categories": [{"id": 7, "name": "Mass"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 30, 40]}]}  # fmt: skip
    (tmp / "c.json").write_text(json.dumps(coco))
    assert run(env, "annotations", "import", tmp / "c.json", "--reader", "ann")[0] == 0
    code, lines, _ = run(env, "export", "--format", "csv", "--source", "reader:ann", "--out", tmp / "o")
    assert code == 0 and len(lines) == 5
    rows = list(csv.DictReader(open(tmp / "o" / "labels.csv")))
    assert {r["image"] for r in rows} == set(names) and all(
        r["Mass"] == "present" and r["reader"] == "ann" for r in rows
    )
    assert all(r["status"] == "submitted" and r["version"].isdigit() and r["saved_at_utc"].startswith("20") for r in rows)
    code, lines, _ = run(env, "export", "--format", "coco", "--source", "reader:ann", "--out", tmp / "o")
    doc = json.loads((tmp / "o" / "annotations.coco.json").read_text())
    assert {i["file_name"] for i in doc["images"]} == set(names)
    [ann] = doc["annotations"]
    cat = {c["id"]: c["name"] for c in doc["categories"]}
    assert cat[ann["category_id"]] == "Mass" and ann["bbox"] == [1.0, 2.0, 30.0, 40.0]
    assert next(i for i in doc["images"] if i["id"] == ann["image_id"])["width"] == 512


def test_an_ai_sr_names_the_model_as_its_device_and_algorithm(world):
    env, ctx, images, tmp = world
    with dbe.read(ctx.engine) as s:
        study = s.scalar(text("SELECT s.study_instance_uid FROM studies s JOIN images i ON i.study_id = s.id WHERE i.id = :i"),
                         {"i": images[DICOM].id})  # fmt: skip
    code, lines, err = run(
        env, "export", "--format", "sr", "--source", "ai", "--study", study, "--out", tmp / "ai"
    )
    assert code == 0, err
    [r] = lines
    path = tmp / "ai" / r["files"][0]
    ds = pydicom.dcmread(path)
    values = {str(e.value) for e in ds.iterall() if isinstance(e.value, str)}  # str(ds) shortens long values
    with dbe.read(ctx.engine) as s:  # the classifier that ran, as stored with its results
        model_id, version, sha = s.execute(
            text(
                "SELECT model_id, model_version, weights_sha256 FROM predictions WHERE task = 'classification'"
            )
        ).one()
    assert {"Algorithm Name", "Probability", model_id, version, f"weights_sha256={sha}"} <= values
    assert _dciodvfy_errors(path) == []
    assert hd.sr.srread(path).SeriesDescription.startswith("CXR Review SR (AI ")
