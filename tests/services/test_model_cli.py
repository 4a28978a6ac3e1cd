"""`cxr-review train` and `cxr-review eval` end to end on a handful of real shared images (short runs: the
real training is documented in README.md and not part of the suite)."""

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.registry import Registry, version_key
from inference.runner import Runner
from services import cli

REPO = Path(__file__).resolve().parents[2]

TINY = ["--encoder", "tu-mobilenetv3_small_050", "--decoder-channels", "32", "16", "16", "8", "8"]


@pytest.fixture
def env(app_env, monkeypatch):
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    return app_env


@pytest.fixture
def jsrt_few(shared_data, tmp_path):
    """6 JSRT images and label maps (3 with a nodule, 3 without) copied into a scratch folder."""
    src = shared_data / "jsrt"
    names = sorted(p.name for p in (src / "images512").glob("JPCLN*.png"))[:3]
    names += sorted(p.name for p in (src / "images512").glob("JPCNN*.png"))[:3]
    for sub in ("images512", "masks512"):
        (tmp_path / "jsrt" / sub).mkdir(parents=True)
        for n in names:
            shutil.copy(src / sub / n, tmp_path / "jsrt" / sub / n)
    return tmp_path / "jsrt"


def _json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_train_segmentation_smoke_writes_a_version_the_registry_and_runner_use(
    env, jsrt_few, tmp_path, capsys
):
    out = tmp_path / "trained"
    argv = ["train", "segmentation", "--images", str(jsrt_few / "images512"), "--masks", str(jsrt_few / "masks512"),
            "--out", str(out), "--version", "0.0.1", "--epochs", "6", "--size", "64", "--lr", "0.01",
            "--batch-size", "4", "--keep-checkpoint", "--no-progress", *TINY]  # fmt: skip
    assert cli.main(argv) == 0
    summary = _json(capsys)
    vdir = out / "anatomy_unet_smp" / "0.0.1"
    assert summary["model_json"] == str(vdir / "model.json")
    assert {p.name for p in vdir.iterdir()} == {
        "model.json",
        "weights.pt",
        "checkpoint_best.pt",
        "train_log.jsonl",
    }
    meta = json.loads((vdir / "model.json").read_text())
    history = [json.loads(line) for line in (vdir / "train_log.jsonl").read_text().splitlines()]
    assert len(history) == 6 and history[-1]["train_loss"] < history[0]["train_loss"]  # it learns
    assert (
        meta["command"].startswith("cxr-review train segmentation --images")
        and "--version 0.0.1" in meta["command"]
    )
    assert meta["data"]["n_train"] + meta["data"]["n_val"] == 6 and meta["data"]["val_files"]
    assert len(meta["data"]["file_list_sha256"]) == 64 and meta["code_version"]
    assert meta["input_size"] == [64, 64] and meta["labels"] == ["background", "lungs", "heart", "clavicles"]
    assert set(meta["validation"]["dice"]) == {"lungs", "heart", "clavicles"}
    assert "native resolution (512x512" in meta["validation"]["resolution"]

    registry = Registry(env["CXR_REVIEW_MODELS_DIR"], trained_roots=[out])
    spec = registry.resolve("anatomy_unet_smp@0.0.1")
    assert registry.problem(spec) is None and spec.weights_sha256 == meta["weights_sha256"]
    assert registry.for_task("segmentation", prefer=("anatomy_unet_smp", "0.0.1")) == spec
    img = np.zeros((300, 260), np.float32)
    img[40:260, 30:230] = 0.6
    res = Runner(registry, "cpu").segment_anatomy(img, "anatomy_unet_smp@0.0.1")
    assert res.label_map.shape == (300, 260) and res.model.version == "0.0.1"

    # The same version cannot be written twice; the next one is numbered automatically.
    assert cli.main(argv) == 2
    assert "holds a model version already" in capsys.readouterr().err

    # A warm start at another resolution keeps the architecture and says where it started from; its first
    # epoch already does better than the first epoch from random weights.
    warm = [*argv[:argv.index("--version")], "--version", "0.0.2", "--epochs", "1", "--size", "96",
            "--init", "anatomy_unet_smp@0.0.1", "--no-progress", *TINY]  # fmt: skip
    assert cli.main([*warm, "--stretch", "0.5", "99.5", "--tta"]) == 0
    meta2 = json.loads((out / "anatomy_unet_smp" / "0.0.2" / "model.json").read_text())
    assert meta2["arch"] == meta["arch"] and meta2["input_size"] == [96, 96]
    # The contrast stretch and the test-time views are part of the version, and its figures were measured
    # with them; a version started from it keeps the stretch its weights were trained for.
    assert meta2["contrast_stretch"] == {"percentiles": [0.5, 99.5]} and "stretched" in meta2["normalisation"]
    assert meta2["validation"]["test_time_views"] == len(meta2["test_time_augmentation"]["views"]) == 5
    assert meta["validation"]["test_time_views"] == 1 and "contrast_stretch" not in meta
    again = [*warm, "--version", "0.0.4", "--init", "anatomy_unet_smp@0.0.2"]
    assert cli.main(again) == 0
    meta4 = json.loads((out / "anatomy_unet_smp" / "0.0.4" / "model.json").read_text())
    assert meta4["contrast_stretch"] == meta2["contrast_stretch"] and "test_time_augmentation" not in meta4
    # Weight averaging: the average of the epochs from --swa-from on competes with them for the checkpoint.
    assert cli.main([*warm, "--version", "0.0.5", "--epochs", "2", "--swa-from", "1"]) == 0
    vdir5 = out / "anatomy_unet_smp" / "0.0.5"
    log5 = [json.loads(line) for line in (vdir5 / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log5] == [1, 2, "swa"] and log5[-1]["epochs_averaged"] == 2
    training5 = json.loads((vdir5 / "model.json").read_text())["training"]
    assert training5["swa_from"] == 1 and training5["epochs_run"] == 2
    best_row = max(log5, key=lambda r: r["val_mean_dice"])
    assert training5["best_val_mean_dice_network_resolution"] == best_row["val_mean_dice"]
    assert training5["best_epoch"] == (
        best_row["epoch"] if best_row["epoch"] != "swa" else "average of epochs 1..2"
    )
    assert f"anatomy_unet_smp@0.0.1 (sha256 {meta['weights_sha256']})" in meta2["source"]
    first = json.loads((out / "anatomy_unet_smp" / "0.0.2" / "train_log.jsonl").read_text().splitlines()[0])
    assert first["train_loss"] < history[0]["train_loss"]
    not_smp = [*warm, "--version", "0.0.3", "--init", "cxr15_mobilenetv3"]  # the last --init wins
    assert cli.main(not_smp) == 2 and "not an anatomy_unet_smp version" in capsys.readouterr().err


def test_train_classification_smoke_from_the_shipped_weights(env, shared_data, tmp_path, capsys):
    nih = shared_data / "nih"
    out = tmp_path / "trained"
    argv = ["train", "classification", "--images", str(nih / "images"), "--labels", str(nih / "labels.csv"),
            "--out", str(out), "--limit", "60", "--epochs", "2", "--head-epochs", "1", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = _json(capsys)
    # the next version past those shipped in assets/models, which the app sees beside --out
    shipped = max((p.name for p in (REPO / "assets" / "models" / "cxr14_mobilenetv3_multilabel").iterdir()), key=version_key)
    assert summary["version"] == f"1.{int(shipped.split('.')[1]) + 1}.0"
    meta = json.loads((out / "cxr14_mobilenetv3_multilabel" / summary["version"] / "model.json").read_text())
    assert meta["activation"] == "sigmoid" and len(meta["labels"]) == 14
    assert set(meta["thresholds"]) == set(meta["labels"]) and all(
        0 <= t <= 1 for t in meta["thresholds"].values()
    )
    assert meta["training"]["init_from"].startswith("cxr15_mobilenetv3@1.0.0 (sha256 0cdb24a9")
    assert "by patient" in meta["data"]["split"] and meta["data"]["n_val"] == 18
    registry = Registry(env["CXR_REVIEW_MODELS_DIR"], trained_roots=[out])
    res = Runner(registry, "cpu").classify(
        np.full((256, 256), 0.5, np.float32), "cxr14_mobilenetv3_multilabel"
    )
    assert res.score_kind.startswith("calibrated sigmoid") and res.thresholds == meta["thresholds"]
    # Platt calibration fitted on the validation split is part of the version: the mean calibrated score of
    # each finding on those images is close to its observed rate there.
    cal = meta["calibration"]
    assert cal["slope"] > 0 and set(cal["intercepts"]) == set(meta["labels"])
    val = meta["data"]["val_files"]
    scores = Runner(registry, "cpu").classify_batch(
        [cv2.imread(str(nih / "images" / f), cv2.IMREAD_GRAYSCALE) / np.float32(255) for f in val],
        "cxr14_mobilenetv3_multilabel",
    )
    truth = {r["Image Index"]: r["Finding Labels"] for r in csv.DictReader(open(nih / "labels.csv"))}
    for label in meta["labels"]:
        rate = np.mean([label in truth[f].split("|") for f in val])
        assert np.mean([s.probabilities[label] for s in scores]) == pytest.approx(rate, abs=0.06), label
    assert "calibration" not in Registry(env["CXR_REVIEW_MODELS_DIR"]).resolve("cxr15_mobilenetv3").metadata


def test_train_calibration_writes_a_calibrated_copy_and_refuses_other_models(env, shared_data, tmp_path, capsys):
    nih = shared_data / "nih"
    out = tmp_path / "trained"
    argv = ["train", "calibration", "--images", str(nih / "images"), "--labels", str(nih / "labels.csv"),
            "--teacher", str(nih / "chexnet_teacher.csv"), "--test-fraction", "0.3", "--folds", "3",
            "--out", str(out), "--limit", "60"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = _json(capsys)
    assert summary["weights_of"] == "cxr15_mobilenetv3@1.0.0"
    assert summary["validation"]["runner_check"]["max_abs_difference"] < 1e-6
    held = summary["validation"]["held_out"]
    assert held["n_images"] == 18 and "student_minus_teacher" in held["all"]  # CheXNet beside it as the anchor
    assert summary["thresholds_rule"].startswith("sensitivity >= 0.9")
    assert cli.main([*argv, "--of", "anatomy_unet_jsrt"]) == 2
    assert "only the shipped 15-class classifier" in capsys.readouterr().err
    # a version number assets/models ships would make both unusable (and the default classifier with them)
    assert cli.main([*argv, "--version", "1.4.0"]) == 2
    assert "cxr14_mobilenetv3_multilabel@1.4.0 is shipped in assets/models" in capsys.readouterr().err
    assert not (out / "cxr14_mobilenetv3_multilabel" / "1.4.0").exists()


def test_cross_validation_scores_every_image_with_a_model_that_never_saw_it(
    env, shared_data, tmp_path, capsys
):
    nih = shared_data / "nih"
    argv = ["train", "classification", "--images", str(nih / "images"), "--labels", str(nih / "labels.csv"),
            "--limit", "40", "--cv", "2", "--epochs", "1", "--head-epochs", "1", "--steps-per-epoch", "1",
            "--out", str(tmp_path / "cv"), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    report = _json(capsys)
    assert report["folds"] == 2 and report["n_images"] == 40 and report["start"] == "cxr15_mobilenetv3"
    assert sum(f["n_held_out"] for f in report["fold_runs"]) == 40
    for kind in ("within_folds", "pooled"):
        part = report["all"][kind]
        diff = part["ours_minus_start"]
        assert diff["difference"] == pytest.approx(part["ours"] - part["start"], abs=1e-9)
        assert diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1]
    # the fold models were trained on the other fold's patients only
    for run in report["fold_runs"]:
        meta = json.loads(
            (tmp_path / "cv" / "cxr14_mobilenetv3_multilabel" / run["version"] / "model.json").read_text()
        )
        assert meta["data"]["n_images"] == 40 - run["n_held_out"]
    assert cli.main([*argv[: argv.index("--cv")], "--cv", "1", *argv[argv.index("--cv") + 2 :]]) == 2
    assert "at least 2 folds" in capsys.readouterr().err
    # without starting weights there is nothing to compare with: refused before any fold trains
    assert cli.main([*argv, "--init", "none"]) == 2
    assert "needs --init" in capsys.readouterr().err


def test_eval_segmentation_json_and_report(env, jsrt_few, tmp_path, capsys):
    report = tmp_path / "report"
    argv = ["eval", "segmentation", "--images", str(jsrt_few / "images512"), "--masks", str(jsrt_few / "masks512"),
            "--model", "anatomy_unet_jsrt@1.0.0", "--report", str(report), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    out = _json(capsys)
    assert out["model"]["id"] == "anatomy_unet_jsrt" and out["model"]["version"] == "1.0.0"
    assert out["n_images"] == 6 and len(out["per_image"]) == 6
    # The shipped model on images it was trained on: the README's 0.979 / 0.965 / 0.926 over all 196.
    assert out["dice"]["lungs"]["mean"] > 0.96 and out["dice"]["heart"]["mean"] > 0.92
    assert out["dice"]["clavicles"]["min"] <= out["dice"]["clavicles"]["mean"] < 1
    for d in out["dice"].values():  # the mean's bootstrap interval over the 6 images
        assert d["min"] <= d["ci95"][0] <= d["mean"] <= d["ci95"][1] <= 1
    assert out["bootstrap"]["resamples"] == 1000
    assert {p.name for p in report.iterdir()} >= {"report.json", "dice_per_class.html", "plotly.min.js"}
    assert json.loads((report / "report.json").read_text())["dice"] == out["dice"]
    # The failure gallery: the 4 lowest-Dice images per class, reference (green) and predicted (magenta) outlines.
    for name in ("lungs", "heart", "clavicles"):
        lowest = sorted(out["per_image"], key=lambda r: r[name])[:4]
        assert out["lowest_dice"][name] == [r["file"] for r in lowest]
        png = report / f"lowest_dice_{name}.png"
        assert str(png) in out["report_files"]
        gallery = cv2.imread(str(png))
        assert gallery.shape[1] >= 4 * 360 and gallery.shape[0] > 360
        green = (gallery[..., 1] > 150) & (gallery[..., 0] < 80) & (gallery[..., 2] < 80)
        magenta = (gallery[..., 0] > 200) & (gallery[..., 2] > 200) & (gallery[..., 1] < 80)
        assert green.sum() > 200 and magenta.sum() > 200
    # Two versions on the same images: the paired difference of mean Dice, per class, with its interval.
    both = tmp_path / "both"
    assert cli.main([*argv[:-3], "--against", "anatomy_unet_smp@1.0.0", "--report", str(both), "--no-progress"]) == 0
    paired = _json(capsys)
    bars = (both / "dice_per_class.html").read_text()
    orange = cv2.imread(str(both / "lowest_dice_heart.png"))  # the second version's outline
    assert ((orange[..., 2] > 200) & (abs(orange[..., 1].astype(int) - 165) < 40) & (orange[..., 0] < 80)).sum() > 200
    assert "anatomy_unet_jsrt@1.0.0 mean (95% interval)" in bars and "anatomy_unet_smp@1.0.0 min" in bars
    assert paired["dice"] == out["dice"] and paired["against"]["model"]["version"] == "1.0.0"
    for name, d in paired["against"]["model_minus_against"].items():
        ours, theirs = paired["dice"][name]["mean"], paired["against"]["dice"][name]["mean"]
        assert d["difference"] == pytest.approx(ours - theirs) and d["n"] == 6
        assert d["ci95"][0] <= d["difference"] <= d["ci95"][1] and 0 <= d["share_of_resamples_a_ahead"] <= 1


def test_eval_classification_ctr_and_bone(env, shared_data, tmp_path, capsys):
    nih = shared_data / "nih"
    few = tmp_path / "nih"
    (few / "images").mkdir(parents=True)
    lines = (nih / "labels.csv").read_text().splitlines()
    cardio = [ln for ln in lines[1:] if "Cardiomegaly" in ln][:5]
    other = [ln for ln in lines[1:] if "Cardiomegaly" not in ln][:15]
    (few / "labels.csv").write_text("\n".join([lines[0], *cardio, *other]) + "\n")
    for ln in cardio + other:
        shutil.copy(nih / "images" / ln.split(",")[0], few / "images")

    args = [
        "--images",
        str(few / "images"),
        "--labels",
        str(few / "labels.csv"),
        "--bootstrap",
        "200",
        "--no-progress",
    ]
    assert (
        cli.main(
            ["eval", "classification", *args, "--model", "cxr15_mobilenetv3", "--report", str(tmp_path / "r")]
        )
        == 0
    )
    out = _json(capsys)
    card = out["per_finding"]["Cardiomegaly"]
    assert out["n_images"] == 20 and card["n_pos"] == 5 and card["n_neg"] == 15
    assert card["ci95"][0] <= card["auc"] <= card["ci95"][1] and len(card["roc"]["fpr"]) == len(
        card["roc"]["tpr"]
    )
    assert "No Finding" not in out["per_finding"] and out["score_kind"] == "softmax"
    # The cases that cost the AUC: the lowest-scored positives and the highest-scored negatives, by default 5.
    missed, alarms = card["hardest"]["missed"], card["hardest"]["false_alarms"]
    assert len(missed) == 5 and len(alarms) == 5
    assert all("Cardiomegaly" in c["findings"] for c in missed) and not any("Cardiomegaly" in c["findings"] for c in alarms)
    assert [c["score"] for c in missed] == sorted(c["score"] for c in missed)
    assert [c["score"] for c in alarms] == sorted((c["score"] for c in alarms), reverse=True)
    assert {c["file"] for c in missed} == {ln.split(",")[0] for ln in cardio}  # all 5 positives, lowest first
    assert (tmp_path / "r" / "roc.html").is_file() and (tmp_path / "r" / "auc_per_finding.html").is_file()
    # The shipped softmax model against our multi-label version on the same 20 images, paired.
    assert cli.main(["eval", "classification", *args, "--model", "cxr15_mobilenetv3",
                     "--against", "cxr14_mobilenetv3_multilabel@1.1.0"]) == 0  # fmt: skip
    vs = _json(capsys)["against"]
    assert len(vs["findings"]) == 14 and vs["model"]["id"] == "cxr14_mobilenetv3_multilabel"
    diff = vs["model_minus_against"]["all"]
    assert diff["a"] == pytest.approx(out["mean_auc"]) and diff["difference"] == pytest.approx(diff["a"] - diff["b"])
    assert diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1]

    assert cli.main(["eval", "ctr", *args, "--model", "anatomy_unet_jsrt"]) == 0
    ctr = _json(capsys)
    assert ctr["n_pos"] == 5 and 0 <= ctr["auc"] <= 1 and len(ctr["ctr"]) == 20
    assert all(0.2 < v < 0.8 for v in ctr["ctr"].values())
    # the viewer withholds a ratio measured on implausible outlines; the report says which and the AUC without
    assert ctr["plausible_only"]["n_images"] == 20 - len(ctr["implausible"])
    assert all(isinstance(p, list) and p for p in ctr["implausible"].values())
    assert cli.main(["eval", "ctr", *args, "--model", "anatomy_unet_jsrt", "--against", "anatomy_unet_smp@1.0.0"]) == 0
    vs = _json(capsys)["against"]
    assert vs["model_minus_against"]["difference"] == pytest.approx(ctr["auc"] - vs["auc"])

    pairs = tmp_path / "pairs"
    for sub in ("authentic", "des"):
        (pairs / sub).mkdir(parents=True)
        for p in sorted((shared_data / "bone_pairs" / sub).iterdir())[:2]:
            shutil.copy(p, pairs / sub)
    assert cli.main(["eval", "bone", "--pairs", str(pairs), "--model", "bone_suppression_ae"]) == 0
    bone = _json(capsys)
    assert bone["n_pairs"] == 2 and bone["mae"]["mean"] < bone["baseline_unprocessed"]["mae"]["mean"]
    assert 0 < bone["ssim"]["mean"] <= 1


def test_eval_usage_errors(env, jsrt_few, capsys):
    base = [
        "eval",
        "segmentation",
        "--images",
        str(jsrt_few / "images512"),
        "--masks",
        str(jsrt_few / "masks512"),
    ]
    assert cli.main([*base, "--model", "anatomy_unet_jsrt@9.9"]) == 2
    assert "known versions: ['1.0.0']" in capsys.readouterr().err
    assert cli.main([*base, "--model", "anatomy_unet_jsrt", "--val-of", "anatomy_unet_jsrt"]) == 2
    assert "records no validation files" in capsys.readouterr().err
    # A model of another task is refused before anything runs, for --model and for --against.
    assert cli.main([*base, "--model", "cxr15_mobilenetv3"]) == 2
    assert "cxr15_mobilenetv3@1.0.0 is a classification model; eval segmentation needs" in capsys.readouterr().err
    assert cli.main([*base, "--model", "anatomy_unet_jsrt", "--against", "bone_suppression_ae"]) == 2
    assert "is a bone_suppression model" in capsys.readouterr().err
