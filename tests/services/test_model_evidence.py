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


def test_a_version_is_not_ranked_on_images_it_chose_its_epoch_or_thresholds_on(app_env):
    from services import model_evidence

    reg = Registry(app_env["CXR_REVIEW_MODELS_DIR"])
    nih = Path("/anywhere/nih/images")
    v11, v13, builtin = (reg.resolve(r) for r in ("cxr14_mobilenetv3_multilabel@1.1.0",
                                                   "cxr14_mobilenetv3_multilabel@1.3.0", "cxr15_mobilenetv3"))  # fmt: skip
    val11, held13 = set(v11.metadata["data"]["val_files"]), set(v13.metadata["data"]["val_files"])
    assert model_evidence.tuned_on(v11, nih, val11) == len(val11)  # it chose its epoch on its validation files
    assert model_evidence.tuned_on(v13, nih, held13) == 0  # recorded as held out: nothing chosen on them
    assert model_evidence.tuned_on(builtin, nih, val11) == 0
    keep, out = model_evidence._unseen([builtin, v11], nih, val11, tuned=True)
    assert [s.ref for s in keep] == [builtin.ref] and out[v11.ref].startswith("chose its epoch")
    keep, _ = model_evidence._unseen([builtin, v11], nih, val11)  # segmentation's second set: as before
    assert [s.ref for s in keep] == [builtin.ref, v11.ref]


def test_classification_evidence_pairs_each_version_with_the_built_in_on_the_same_images(app_env, monkeypatch,
                                                                                         shared_data):  # fmt: skip
    from inference.runner import Runner
    from services import model_evidence

    monkeypatch.setattr(model_evidence, "N_BOOT", 100)
    monkeypatch.setattr(model_evidence, "TIMING_IMAGES", 1)
    monkeypatch.setattr(model_evidence, "TIMING_ROUNDS", 1)
    runner = Runner(Registry(app_env["CXR_REVIEW_MODELS_DIR"]), "cpu")
    specs = [runner.registry.resolve(r) for r in ("cxr15_mobilenetv3", "cxr14_mobilenetv3_multilabel@1.3.0",
                                                  "cxr14_mobilenetv3_multilabel@1.1.0")]  # fmt: skip
    nih = shared_data / "nih"
    data = model_evidence.measure_classification(runner, specs, nih / "images", nih / "labels.csv",
                                                 "cxr14_mobilenetv3_multilabel@1.3.0", 2.0, "test")  # fmt: skip
    assert set(data["versions"]) == {specs[0].ref, specs[1].ref} and specs[2].ref in data["left_out"]
    figures = data["versions"][specs[1].ref]
    m = figures["metrics"][data["rule"]["set"]]["mean_auc_multi"]
    assert m["ci95"][0] <= m["mean"] <= m["ci95"][1] and m["n"] == 47
    vs = figures["vs_reference"]
    base = data["versions"][specs[0].ref]["metrics"][data["rule"]["set"]]["mean_auc_multi"]["mean"]
    assert vs["difference"] == pytest.approx(m["mean"] - base) and vs["ci95"][0] <= vs["difference"] <= vs["ci95"][1]
    assert data["rule"]["non_inferiority_margin"] == 0.01
    # the tie's interval reaches below -0.01: the built-in stays the choice despite the lower mean
    assert vs["ci95"][0] < -0.01 and data["chosen"] == specs[0].ref


def test_times_taken_on_a_busy_machine_are_flagged():
    from services import model_evidence

    assert model_evidence.busy_machine(1.8, 2, 2) is None  # its own two threads: a quiet machine
    assert model_evidence.busy_machine(1.8, 2, 1) is None
    why = model_evidence.busy_machine(4.6, 2, 2)  # other jobs worth more than a CPU
    assert why.startswith("timed on a busy machine (1-minute load average 4.6 on 2 CPUs)")
