"""`cxr-review evidence`: versions measured side by side on real hand-drawn lung masks; the file it writes
picks the default version."""

import csv
import json
from pathlib import Path

import pytest

from inference.registry import Registry
from services import cli
from tests.inference.test_versions import write_anatomy


@pytest.fixture
def followup_few(shared_data, tmp_path):
    """Three frontal covid_followup films with hand-drawn lung masks, and one lateral (to be left out)."""
    src = shared_data / "covid_followup"
    with open(src / "metadata.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["lung_mask"]]
    frontal = [r for r in rows if r["view"] == "PA"][:3]
    lateral = [r for r in rows if r["view"] == "L"][:1]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for r in frontal + lateral:
        (tmp_path / "images" / r["file"]).symlink_to(src / "images" / r["file"])
        (tmp_path / "masks" / r["lung_mask"]).symlink_to(src / "lung_masks" / r["lung_mask"])
    return tmp_path, src / "metadata.csv"


def test_evidence_measures_side_by_side_and_the_registry_follows_it(followup_few, tmp_path, app_env,
                                                                    monkeypatch, capsys):  # fmt: skip
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    trained = tmp_path / "trained"
    write_anatomy(trained, "0.0.1")  # a tiny, barely trained network: the built-in must beat it
    monkeypatch.setattr("inference.registry.ASSETS_MODELS", trained)
    monkeypatch.setattr("services.model_evidence.TIMING_IMAGES", 1)
    monkeypatch.setattr("services.model_evidence.TIMING_ROUNDS", 1)
    folder, metadata = followup_few
    out = tmp_path / "root"
    code = cli.main(["evidence", "segmentation", "--lung-images", str(folder / "images"), "--lung-masks",
                     str(folder / "masks"), "--frontal-from", str(metadata), "--versions", "anatomy_unet_jsrt",
                     "anatomy_unet_smp@0.0.1", "--out", str(out)])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads((out / "evidence" / "segmentation.json").read_text())
    lungs = data["rule"]["set"]
    assert data["sets"][lungs]["n"] == 3  # the lateral film is left out
    dice = {ref: v["metrics"][lungs]["lungs_dice"]["mean"] for ref, v in data["versions"].items()}
    assert dice["anatomy_unet_jsrt@1.0.0"] > 0.6 > dice["anatomy_unet_smp@0.0.1"]
    assert summary["chosen"] == data["chosen"] == "anatomy_unet_jsrt@1.0.0"
    # times are relative to the built-in version (the budget's reference)
    assert data["versions"]["anatomy_unet_jsrt@1.0.0"]["relative_time"] == 1.0
    assert data["rule"]["time_reference"] == "anatomy_unet_jsrt@1.0.0"
    assert data["paired_vs_chosen"]["anatomy_unet_smp@0.0.1"]["difference"] < 0
    # The registry reads the file from its trained roots and follows the rule.
    reg = Registry(app_env["CXR_REVIEW_MODELS_DIR"], trained_roots=[out, trained])
    assert reg.for_task("segmentation").ref == "anatomy_unet_jsrt@1.0.0"


def test_evidence_refuses_a_model_of_another_task(followup_few, app_env, monkeypatch, capsys):
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    folder, metadata = followup_few
    code = cli.main(["evidence", "segmentation", "--lung-images", str(folder / "images"), "--lung-masks",
                     str(folder / "masks"), "--versions", "bone_suppression_ae"])  # fmt: skip
    assert code == 2
    assert "bone_suppression model" in capsys.readouterr().err


def test_a_version_is_never_ranked_on_images_it_trained_on(app_env):
    from inference.registry import Registry
    from services import model_evidence

    reg = Registry(app_env["CXR_REVIEW_MODELS_DIR"])
    nih = Path("/anywhere/nih/images")
    v11, v12, builtin = (reg.resolve(r) for r in ("cxr14_mobilenetv3_multilabel@1.1.0",
                                                   "cxr14_mobilenetv3_multilabel@1.2.0", "cxr15_mobilenetv3"))  # fmt: skip
    val = set(v11.metadata["data"]["val_files"])
    assert model_evidence.trained_on(v11, nih, val) == 0  # its own validation files
    assert model_evidence.trained_on(v12, nih, val) == len(val)  # distilled on all 435 images
    assert model_evidence.trained_on(builtin, nih, val) is None  # not recorded
    assert model_evidence.trained_on(v12, Path("/x/jsrt/images512"), {"JPCLN001.png"}) == 0
    keep, left_out = model_evidence._unseen([builtin, v11, v12], nih, val)
    assert [s.ref for s in keep] == [builtin.ref, v11.ref] and list(left_out) == [v12.ref]
