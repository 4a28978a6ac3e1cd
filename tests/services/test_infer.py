"""`cxr-review infer` as a user runs it: a real process on real files with the real models; JSON and PNGs out."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.registry import Registry
from inference.runner import Runner
from services import infer
from tests.conftest import models_env, run_cli
from viewer import dicom_io

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("CXR_REVIEW_MODELS_DIR", REPO.parent / "shared" / "models"))
# The sha256 of each weights file as /work/shared/models/README.md publishes it.
README_SHA256 = {
    "anatomy_unet_jsrt": "1fa71d35208b33b575ff0ffc4363c58ff599f69c5182d1bb7ddb2855c8c1b3ab",
    "bone_suppression_ae": "27a7beddfaf0f3b051eb9813f343f4eb261818a8e26f1fddd56844b6af0a53a3",
    "cxr15_mobilenetv3": "0cdb24a96b813c2b0f3b4b06e632f31e6e497f4c57a259eca6d1c680ec7da751",
}
# The evidence file ships the anatomy default: anatomy_unet_smp@1.3.0+1view (a committed version, its sha256 in
# its model.json).
DEFAULT_ANATOMY = Registry(MODELS).resolve("anatomy_unet_smp@1.3.0+1view")
EXPECTED_SHA256 = {"anatomy_unet_smp": DEFAULT_ANATOMY.weights_sha256,
                   **{k: v for k, v in README_SHA256.items() if k != "anatomy_unet_jsrt"}}  # fmt: skip
BONE_WEIGHTS = "bone_suppression_kalisz_ae_torch.pt"
FIELDS = {
    "models", "findings", "anatomy_mask", "bone_suppressed", "ctr", "view_position", "ctr_note", "boxes",
    "timings_ms", "research_use", "input", "unavailable", "anatomy_problems", "ctr_measured",
    "inverted_grey_scale", "quality_gate",
}  # fmt: skip


def run(args, env):
    return run_cli("infer", args, env)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return models_env(tmp_path_factory, BONE_WEIGHTS)


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory):
    """The NIH DX DICOM, an NIH PNG, and a folder holding a broken file and another image under the PNG's
    name (a crop, 512 x 400, so that "full resolution" is not the square the models see)."""
    png = sorted((shared_data / "nih" / "images").glob("*.png"))[0]
    folder = tmp_path_factory.mktemp("more")
    (folder / "broken.dcm").write_bytes(b"DICM" + b"\0" * 50)
    crop = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)[:, 50:450]
    cv2.imwrite(str(folder / png.name), crop)
    return {
        "dx": shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm",
        "png": png,
        "folder": folder,
        "labels": shared_data / "nih" / "labels.csv",
    }


@pytest.fixture(scope="module")
def result(env, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    r = run(
        [inputs["dx"], inputs["png"], inputs["folder"], "--out", out, "--device", "cpu",
         "--model", "cxr15_mobilenetv3@1.0.0", "--metadata", inputs["labels"]],
        env,
    )  # fmt: skip
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    docs = {line["file"]: json.loads(Path(line["out"]).read_text()) for line in lines if line["out"]}
    return {"r": r, "lines": lines, "docs": docs, "out": out}


def test_one_line_per_file_and_exit_1_when_one_is_rejected(result, inputs):
    r, lines = result["r"], result["lines"]
    assert r.returncode == 1, r.stderr
    folder = inputs["folder"]
    assert [(line["file"], line["status"]) for line in lines] == [
        (str(inputs["dx"]), "done"),
        (str(inputs["png"]), "done"),
        (str(folder / inputs["png"].name), "done"),  # folders are walked in name order
        (str(folder / "broken.dcm"), "rejected"),
    ]
    assert [line["reason"] is None for line in lines] == [True, True, True, False]
    assert lines[3]["out"] is None and "DICOM" in lines[3]["reason"]


def test_same_names_in_two_folders_do_not_overwrite_each_other(result, inputs):
    lines = result["lines"]
    first, second = Path(lines[1]["out"]), Path(lines[2]["out"])
    assert first != second and first.parent == second.parent == result["out"]
    a, b = result["docs"][lines[1]["file"]], result["docs"][lines[2]["file"]]
    assert (a["input"]["columns"], b["input"]["columns"]) == (512, 400)
    assert a["anatomy_mask"] != b["anatomy_mask"] and a["bone_suppressed"] != b["bone_suppressed"]
    assert cv2.imread(str(result["out"] / b["anatomy_mask"]), cv2.IMREAD_UNCHANGED).shape == (512, 400)


def test_json_fields_and_provenance(result, inputs):
    for file, doc in result["docs"].items():
        assert FIELDS <= doc.keys(), file
        assert "research use" in doc["research_use"].lower()
        gate = doc["quality_gate"]
        assert gate["passed"] is True and gate["reasons"] == [] and doc["models"][0] == gate["model"] | {"task": "quality_gate"}
        # the anatomy default is the version assets/models/evidence/segmentation.json ranks first; the others
        # are the shipped weights, with the sha256 the models README publishes
        assert {m["id"]: m["weights_sha256"] for m in doc["models"][1:]} == EXPECTED_SHA256
        assert doc["models"][1]["version"] == DEFAULT_ANATOMY.version
        assert all(m["version"] for m in doc["models"]) and doc["unavailable"] == {}
        assert set(doc["timings_ms"]) == {*EXPECTED_SHA256, "quality_gate", "total"}
        assert doc["timings_ms"]["total"] == pytest.approx(sum(doc["timings_ms"][m] for m in [*EXPECTED_SHA256, "quality_gate"]))
    dx = result["docs"][str(inputs["dx"])]
    assert dx["input"]["pixel_sha256"] == dicom_io.pixel_sha256(dicom_io.load(inputs["dx"]))
    assert (dx["input"]["rows"], dx["input"]["columns"]) == (1024, 1024)


def test_findings_cover_every_class_sorted_by_probability(result):
    labels = set(Registry(MODELS).get("cxr15_mobilenetv3").labels)
    for doc in result["docs"].values():
        findings = doc["findings"]
        assert {f["label"] for f in findings} == labels and len(findings) == 15
        probs = [f["probability"] for f in findings]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)  # softmax
        assert all(f["positive"] == (f["probability"] >= f["threshold"]) for f in findings)


def test_anatomy_mask_at_full_resolution_with_sane_lungs_and_ctr(result, inputs):
    for doc in result["docs"].values():
        mask = cv2.imread(str(result["out"] / doc["anatomy_mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (doc["input"]["rows"], doc["input"]["columns"])
        assert set(np.unique(mask)) <= {0, 1, 2, 3} and {1, 2} <= set(np.unique(mask))
        assert 0.15 <= (mask == 1).mean() <= 0.6
        bone = cv2.imread(str(result["out"] / doc["bone_suppressed"]), cv2.IMREAD_UNCHANGED)
        assert bone.shape == mask.shape and bone.dtype in (np.uint8, np.uint16) and bone.std() > 0
    dx = result["docs"][str(inputs["dx"])]
    assert 0.35 <= dx["ctr"] <= 0.65 and dx["anatomy_problems"] == []
    assert dx["view_position"] is None and "PA" in dx["ctr_note"]  # the DX header records no view
    png = result["docs"][str(inputs["png"])]
    assert png["view_position"] == "PA" and png["ctr_note"] is None  # from the NIH labels.csv


def test_boxes_lie_inside_the_image(result, inputs):
    dx = result["docs"][str(inputs["dx"])]
    assert dx["boxes"], "the DX should give at least one Grad-CAM box"
    for doc in result["docs"].values():
        rows, cols = doc["input"]["rows"], doc["input"]["columns"]
        labels = {f["label"] for f in doc["findings"]} - {"No Finding"}
        for b in doc["boxes"]:
            assert b["label"] in labels and 0 < b["score"] <= 1
            assert 0 <= b["x"] and 0 <= b["y"] and b["w"] > 0 and b["h"] > 0
            assert b["x"] + b["w"] <= cols and b["y"] + b["h"] <= rows


def test_changed_weights_make_one_model_unavailable_and_the_others_still_run(inputs, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for f in MODELS.glob("*.pt"):
        (models / f.name).symlink_to(f)
    (models / BONE_WEIGHTS).unlink()
    (models / BONE_WEIGHTS).write_bytes((MODELS / BONE_WEIGHTS).read_bytes() + b"\0")
    out = tmp_path / "out"
    runner = Runner(Registry(models, trained_roots=[]), "cpu")
    lines = list(infer.infer_paths(runner, [inputs["png"]], out, max_bytes=50 * 2**20))
    assert [line.status for line in lines] == ["done"]
    doc = json.loads(Path(lines[0].out).read_text())
    assert doc["unavailable"].keys() == {"bone_suppression_ae", "quality_gate"}  # no gate under trained_roots=[]
    assert doc["quality_gate"]["passed"] is None and doc["quality_gate"]["reasons"][0].startswith("quality not checked")
    assert "sha256 mismatch" in doc["unavailable"]["bone_suppression_ae"]
    assert doc["bone_suppressed"] is None and "bone_suppression_ae" not in doc["timings_ms"]
    assert [m["id"] for m in doc["models"]] == ["anatomy_unet_jsrt", "cxr15_mobilenetv3"]
    assert (out / doc["anatomy_mask"]).is_file() and len(doc["findings"]) == 15 and doc["ctr"] is not None


def test_implausible_outlines_withhold_the_ctr_and_keep_the_measured_ratio(inputs, result, tmp_path):
    # An inverted radiograph (as a MONOCHROME1 image shown as MONOCHROME2 would look) gives outlines that do not
    # look like a chest: `ctr` is null as in the viewer, the ratio measured on them stays in `ctr_measured`.
    inverted = tmp_path / "inverted.png"
    cv2.imwrite(str(inverted), 255 - cv2.imread(str(inputs["png"]), cv2.IMREAD_GRAYSCALE))
    runner = Runner(Registry(MODELS, trained_roots=[]), "cpu")
    [line] = infer.infer_paths(runner, [inverted], tmp_path / "out", max_bytes=50 * 2**20)
    doc = json.loads(Path(line.out).read_text())
    assert doc["anatomy_problems"] and doc["ctr"] is None and doc["inverted_grey_scale"] is True
    assert doc["ctr_measured"] == doc["ctr_lines"]["ratio"] and "withheld" in doc["ctr_note"]
    dx = result["docs"][str(inputs["dx"])]  # plausible outlines: both figures are the same
    assert dx["ctr"] == dx["ctr_measured"] == dx["ctr_lines"]["ratio"] and dx["inverted_grey_scale"] is False


def test_outputs_inside_an_input_folder_are_not_read_back_as_inputs(inputs, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "chest.png").write_bytes(inputs["png"].read_bytes())
    runner = Runner(Registry(MODELS), "cpu")
    for _ in range(2):
        lines = list(infer.infer_paths(runner, [folder], folder / "ai", max_bytes=50 * 2**20))
        assert [(Path(line.file).name, line.status) for line in lines] == [("chest.png", "done")]
    assert sorted(p.name for p in (folder / "ai").iterdir()) == [
        "chest.anatomy.png", "chest.bone_suppressed.png", "chest.json"
    ]  # fmt: skip


def test_an_unknown_model_is_a_usage_error(env, inputs, tmp_path):
    r = run([inputs["png"], "--out", tmp_path / "out", "--model", "unknown"], env)
    assert r.returncode == 2 and r.stdout == ""
    assert "unknown model id 'unknown'" in r.stderr and "cxr15_mobilenetv3" in r.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(infer.InferUsageError, match="no usable version"):
        infer.pick_models(Registry(MODELS), ["cxr15_mobilenetv3@0.0.1"])
