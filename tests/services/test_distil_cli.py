"""`cxr-review train classification --teacher CSV` end to end on a few real NIH images: the version it writes
(per-finding calibration, thresholds by the sensitivity rule, provenance) runs in the app's runner as it was
measured; a teacher file or a start that does not fit is refused before anything is trained or written."""

import csv
import json

import numpy as np
import pytest

from inference.registry import Registry
from inference.runner import Runner
from services import analysis, cli


@pytest.fixture
def env(app_env, monkeypatch):
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    return app_env


def _argv(nih, out, *extra):
    return ["train", "classification", "--images", str(nih / "images"), "--labels", str(nih / "labels.csv"),
            "--teacher", str(nih / "chexnet_teacher.csv"), "--out", str(out), "--no-progress", *map(str, extra)]  # fmt: skip


def test_distillation_writes_a_calibrated_version_that_runs_as_measured(env, shared_data, tmp_path, capsys):
    nih, out = shared_data / "nih", tmp_path / "trained"
    assert cli.main(_argv(nih, out, "--limit", 40, "--folds", 2, "--views", 1, "--version", "7.0.0")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta = json.loads((out / "cxr14_mobilenetv3_multilabel" / "7.0.0" / "model.json").read_text())
    assert summary["version"] == "7.0.0" and meta["arch"]["head"] == "pooled_linear"
    assert meta["thresholds_rule"].startswith("sensitivity >= 0.9 per finding")
    cal = meta["calibration"]
    assert (
        set(cal["slopes"]) == set(cal["intercepts"]) == set(meta["labels"])
        and min(cal["slopes"].values()) > 0
    )
    assert (
        meta["data"]["teacher_sha256"]
        and meta["data"]["n_images"] == 40
        and "2 folds" in meta["data"]["folds"]
    )
    assert "--teacher" in meta["command"]
    cv = meta["validation"]["cross_validation"]
    assert set(cv["all"]["mean_auc"]) == {"student", "teacher", "start"} and cv["all"]["n_images"] == 40
    assert meta["validation"]["reliability"]["per_finding"].keys() == set(meta["labels"])
    points = meta["validation"]["operating_points"]
    for label, p in points.items():
        assert p["threshold"] == meta["thresholds"][label]
        assert p["n_pos"] == 0 or p["sensitivity"] >= 0.9
    # the written fp16 version, run by the app's runner, gives the probabilities that were measured
    assert meta["validation"]["runner_check"]["max_abs_difference"] < 2e-3
    spec = Registry(env["CXR_REVIEW_MODELS_DIR"], trained_roots=[out]).resolve(
        "cxr14_mobilenetv3_multilabel@7.0.0"
    )
    assert spec.calibration["slopes"] == cal["slopes"]
    res = Runner(Registry(env["CXR_REVIEW_MODELS_DIR"], trained_roots=[out]), "cpu").classify(
        np.full((256, 256), 0.5, np.float32), spec
    )
    assert res.score_kind.startswith("calibrated") and res.thresholds == meta["thresholds"]
    # what the viewer says "positive" means comes from the version's model.json
    said = analysis.positive_means(analysis.Analysis(thresholds_rule=analysis.thresholds_rule(spec)))
    assert meta["thresholds_rule"] in said
    said = analysis.positive_means(analysis.Analysis(thresholds_from="ward v2", thresholds_rule="x"))
    assert "threshold set ward v2" in said and "x" not in said


def _nothing_written(out):
    return not out.exists() or not any(out.rglob("*"))


def test_a_teacher_file_that_does_not_match_is_refused_before_training(env, shared_data, tmp_path, capsys):
    nih, out = shared_data / "nih", tmp_path / "trained"
    rows = list(csv.DictReader(open(nih / "chexnet_teacher.csv")))
    bad = tmp_path / "teacher.csv"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c for c in rows[0] if c != "Edema"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    argv = _argv(nih, out)
    argv[argv.index("--teacher") + 1] = str(bad)
    assert cli.main(argv) == 2
    assert "must have one column per finding: missing ['Edema']" in capsys.readouterr().err
    assert _nothing_written(out)


def test_a_start_of_another_task_is_refused_before_training(env, shared_data, tmp_path, capsys):
    nih, out = shared_data / "nih", tmp_path / "trained"
    assert cli.main(_argv(nih, out, "--init", "bone_suppression_ae")) == 2
    assert "is a bone_suppression model, not a findings classifier" in capsys.readouterr().err
    assert _nothing_written(out)
    assert cli.main(_argv(nih, out, "--teacher-weight", 1.5)) == 2
    assert "--teacher-weight must be in [0, 1]" in capsys.readouterr().err
    assert cli.main(_argv(nih, out, "--epochs", 3)) == 2
    assert "drop --cv, --head, --no-calibrate, --epochs" in capsys.readouterr().err


def test_the_viewer_says_what_the_default_classifiers_thresholds_did_on_held_out_images():
    from tests.conftest import MODELS

    spec = Registry(MODELS).resolve("cxr14_mobilenetv3_multilabel@1.3.0")
    points = spec.metadata["validation"]["held_out"]["at_thresholds"].values()
    sens = np.mean([p["sensitivity"] for p in points])
    flagged_without = 1 - np.mean([p["specificity"] for p in points])
    said = analysis.positive_means(analysis.Analysis(thresholds_rule=analysis.thresholds_rule(spec),
                                                     findings={"probabilities": {"Effusion": 0.1}}))  # fmt: skip
    assert spec.metadata["thresholds_rule"] in said
    assert f"130 held-out images they flagged on average {sens:.0%} of the films with a finding" in said
    assert f"and {flagged_without:.0%} of those without it" in said
    assert "No Finding" not in said  # a multi-label version without that label
    builtin = analysis.positive_means(analysis.Analysis(findings={"probabilities": {"No Finding": 0.2}}))
    assert "“No Finding” is flagged only when no finding is" in builtin


def test_distillation_options_without_a_teacher_are_refused_not_dropped(env, shared_data, tmp_path, capsys):
    from services import cli

    nih, out = shared_data / "nih", tmp_path / "trained"
    argv = ["train", "classification", "--images", str(nih / "images"), "--labels", str(nih / "labels.csv"),
            "--out", str(out), "--test-fraction", "0.3", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "--test-fraction need --teacher (distillation)" in capsys.readouterr().err
    assert _nothing_written(out)
