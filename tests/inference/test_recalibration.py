"""A calibrated version of the shipped classifier (inference/training/recalibration.py): written without a copy of
the weights, run by the app exactly as fitted, ranking images as the shipped model does, and the committed one
(cxr14_mobilenetv3_multilabel@1.4.0) reproducing its held-out figures."""

import json

import numpy as np
import pytest

from inference import metrics
from inference.models.cxr14_mobilenetv3_multilabel import FINDINGS
from inference.registry import Registry
from inference.runner import Runner
from inference.training import recalibration as R
from inference.training.data import DatasetError, read_gray, read_labels_csv


def _cfg(shared_data, models_dir, tmp_path, **kw) -> R.CalibrateConfig:
    nih = shared_data / "nih"
    kw = {"limit": 60, "test_fraction": 0.3, "folds": 3} | kw
    return R.CalibrateConfig(images=nih / "images", labels=nih / "labels.csv", out=tmp_path, models_dir=models_dir, **kw)


def test_a_calibrated_copy_ranks_as_the_shipped_model_and_runs_as_fitted(shared_data, models_dir, tmp_path):
    cfg = _cfg(shared_data, models_dir, tmp_path, version="9.0.0")
    meta = R.calibrate(cfg, ["train", "calibration"])
    vdir = tmp_path / "cxr14_mobilenetv3_multilabel" / "9.0.0"
    assert sorted(p.name for p in vdir.iterdir()) == ["model.json", "train_log.jsonl"]  # no copy of the weights
    assert meta["weights_of"] == "cxr15_mobilenetv3@1.0.0"
    assert meta["validation"]["runner_check"]["max_abs_difference"] < 1e-6
    held = set(meta["data"]["val_files"])
    assert meta["data"]["val_use"] == "held_out" and meta["data"]["n_images"] + len(held) == 60
    reg = Registry(models_dir, trained_roots=[tmp_path])
    spec = reg.check("cxr14_mobilenetv3_multilabel@9.0.0")
    assert spec.score_kind == "calibrated" and spec.weights_sha256 == reg.resolve("cxr15_mobilenetv3").weights_sha256
    assert all(0 < t < 1 for t in spec.thresholds.values())
    # on the held-out images (never fitted on) the calibrated scores rank exactly as the shipped softmax shares
    nih = shared_data / "nih"
    rows = [r for r in read_labels_csv(nih / "labels.csv", nih / "images")[:60] if r.file in held]
    runner = Runner(reg, "cpu")
    imgs = [read_gray(nih / "images" / r.file) for r in rows]
    mine = runner.classify_batch(imgs, spec)
    shipped = runner.classify_batch(imgs, "cxr15_mobilenetv3@1.0.0")
    for label in FINDINGS:
        y = np.array([label in r.findings for r in rows])
        if y.any() and not y.all():
            a = metrics.roc_auc(y, [m.probabilities[label] for m in mine])
            b = metrics.roc_auc(y, [s.probabilities[label] for s in shipped])
            assert a == pytest.approx(b, abs=1e-9), label
    # and No Finding is not a score of this version: it is derived (never beside a positive finding)
    assert "No Finding" not in mine[0].probabilities


def test_only_the_shipped_classifier_can_be_calibrated_and_bad_options_are_refused(shared_data, models_dir, tmp_path):
    with pytest.raises(DatasetError, match="only the shipped 15-class classifier"):
        R.calibrate(_cfg(shared_data, models_dir, tmp_path, of="cxr14_mobilenetv3_multilabel@1.3.0"))
    for change, reason in (({"sensitivity": 0.0}, "sensitivity"), ({"test_fraction": 1.0}, "test-fraction"),
                           ({"folds": 1}, "folds")):  # fmt: skip
        with pytest.raises(DatasetError, match=reason):
            R.calibrate(_cfg(shared_data, models_dir, tmp_path, **change))
    assert not (tmp_path / "cxr14_mobilenetv3_multilabel").exists()  # refused before anything is written


def test_the_committed_calibrated_default_reproduces_its_held_out_figures(registry, shared_data):
    """1.4.0 (README "Default versions chosen on evidence"): the held-out patients are 1.3.0's, its thresholds
    follow its stated rule, and its held-out mean AUC and ECE are what the runner gives now."""
    from inference import curves

    spec = registry.check(registry.resolve("cxr14_mobilenetv3_multilabel@1.4.0"))
    meta = spec.metadata
    other = registry.resolve("cxr14_mobilenetv3_multilabel@1.3.0").metadata["data"]["val_files"]
    assert meta["data"]["val_files"] == other and meta["data"]["val_use"] == "held_out"
    assert meta["thresholds_rule"].startswith("sensitivity >= 0.9 per finding")
    for label in spec.labels:
        assert spec.thresholds[label] == meta["validation"]["operating_points"][label]["threshold"]
    nih = shared_data / "nih"
    rows = [r for r in read_labels_csv(nih / "labels.csv", nih / "images") if r.file in set(other)]
    results = Runner(registry, "cpu").classify_batch([read_gray(nih / "images" / r.file) for r in rows], spec)
    s = np.array([[res.probabilities[label] for label in FINDINGS] for res in results])
    y = np.array([[label in r.findings for label in FINDINGS] for r in rows])
    held = meta["validation"]["held_out"]
    aucs = [metrics.roc_auc(y[:, j], s[:, j]) for j in range(len(FINDINGS)) if y[:, j].any()]
    assert np.mean(aucs) == pytest.approx(held["all"]["student"], abs=1e-6)
    ece = np.mean([curves.calibration_bins(y[:, j], s[:, j])["ece"] for j in range(len(FINDINGS))])
    assert ece == pytest.approx(held["reliability_mean"]["ece"], abs=1e-6)
    assert json.loads(json.dumps(meta))["weights_of"] == "cxr15_mobilenetv3@1.0.0"


def test_grad_cam_without_a_label_explains_the_most_probable_finding_of_a_calibrated_version(runner, shared_data):
    """Per-finding calibration can order findings otherwise than their logits: 'the top class' is the most
    probable one, as the findings table shows it."""
    img = read_gray(shared_data / "nih" / "images" / read_labels_csv(shared_data / "nih" / "labels.csv",
                                                                     shared_data / "nih" / "images")[0].file)  # fmt: skip
    ref = "cxr14_mobilenetv3_multilabel@1.4.0"
    top = runner.classify(img, ref).top_label
    np.testing.assert_allclose(runner.gradcam(img, None, ref), runner.gradcam(img, top, ref), atol=1e-6)
