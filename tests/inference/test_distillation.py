"""Distillation from a teacher's probabilities (inference/training/distillation.py): the teacher CSV's refusals,
the student's start refused for the wrong task or labels, the loss on 8 real images, and the calibration and
sensitivity rule on hand-made cases."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from inference import calibration, curves, metrics
from inference.models.cxr14_mobilenetv3_multilabel import FINDINGS
from inference.training import distillation as D
from inference.training.data import ClassificationData, DatasetError, read_labels_csv

FILES = ["a.png", "b.png", "c.png"]


def _teacher(path: Path, rows: list[dict], columns=None) -> Path:
    columns = columns or ["Image Index", *FINDINGS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _row(name: str, value="0.25", **override) -> dict:
    return {"Image Index": name, **dict.fromkeys(FINDINGS, value), **override}


def test_a_matching_teacher_file_is_read_in_the_order_of_the_images(tmp_path):
    rows = [_row("c.png", "0.5"), _row("a.png", "0.0", Edema="1"), _row("b.png", "0.125")]
    t = D.read_teacher(_teacher(tmp_path / "t.csv", rows), FILES)
    assert t.shape == (3, 14)
    assert t[0, FINDINGS.index("Edema")] == 1.0 and t[0, 0] == 0.0
    assert (t[1] == 0.125).all() and (t[2] == 0.5).all()


@pytest.mark.parametrize(
    ("rows", "columns", "reason"),
    [
        ([_row(f) for f in FILES], ["Image Index", *FINDINGS[:-1]], r"missing \['Hernia'\]"),
        ([_row(f) | {"Pneumonia_x": "0"} for f in FILES], ["Image Index", *FINDINGS, "Pneumonia_x"], r"unknown \['Pneumonia_x'\]"),
        ([{k: v for k, v in _row(f).items() if k != "Image Index"} | {"name": f} for f in FILES],
         ["name", *FINDINGS], "needs an 'Image Index' column"),
        ([*(_row(f) for f in FILES), _row("z.png")], None, r"1 image\(s\) that are not among the labelled images, e.g. \['z.png'\]"),
        ([_row("a.png"), _row("b.png")], None, r"no row for 1 labelled image\(s\), e.g. \['c.png'\]"),
        ([_row("a.png"), _row("b.png"), _row("c.png", Mass="1.2")], None, r"line 4: Mass = 1.2 is outside \[0, 1\]"),
        ([_row("a.png", Edema="-0.1"), _row("b.png"), _row("c.png")], None, r"line 2: Edema = -0.1 is outside"),
        ([_row("a.png", Edema="nan"), _row("b.png"), _row("c.png")], None, "Edema = nan is outside"),
        ([_row("a.png", Edema="high"), _row("b.png"), _row("c.png")], None, "Edema = 'high' is not a number"),
        ([_row("a.png"), _row("a.png"), _row("b.png"), _row("c.png")], None, "'a.png' appears twice"),
    ],
)  # fmt: skip
def test_a_teacher_file_that_does_not_match_is_refused_with_the_reason(tmp_path, rows, columns, reason):
    with pytest.raises(DatasetError, match=reason):
        D.read_teacher(_teacher(tmp_path / "t.csv", rows, columns), FILES)


def test_a_missing_teacher_file_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="cannot read teacher file"):
        D.read_teacher(tmp_path / "nope.csv", FILES)


def test_soft_targets_weigh_labels_and_teacher():
    y, t = np.array([[1.0, 0.0]]), np.array([[0.2, 0.6]])
    assert D.soft_targets(y, t, 0.0) == pytest.approx(y)
    assert D.soft_targets(y, t, 1.0) == pytest.approx(t)
    assert D.soft_targets(y, t, 0.25) == pytest.approx(np.array([[0.8, 0.15]]))


def _cfg(tmp_path, models_dir, **kw) -> D.DistillConfig:
    return D.DistillConfig(images=tmp_path, labels=tmp_path / "l.csv", teacher=tmp_path / "t.csv",
                           out=tmp_path / "out", models_dir=models_dir, progress=False, **kw)  # fmt: skip


def test_a_start_with_the_wrong_task_or_labels_is_refused_before_its_weights_are_read(tmp_path, models_dir):
    with pytest.raises(DatasetError, match="is a segmentation model, not a findings classifier"):
        D.student(_cfg(tmp_path, models_dir, init="anatomy_unet_jsrt"))
    # a classifier of this family with other labels (its weights file does not even exist)
    d = tmp_path / "out" / "cxr14_mobilenetv3_multilabel" / "9.0.0"
    d.mkdir(parents=True)
    labels = ["Cardiomegaly", "Effusion"]
    (d / "model.json").write_text(json.dumps({
        "model_id": "cxr14_mobilenetv3_multilabel", "version": "9.0.0", "task": "classification",
        "family": "cxr14_mobilenetv3_multilabel", "labels": labels, "thresholds": dict.fromkeys(labels, 0.5),
        "activation": "sigmoid", "input_size": [224, 224], "weights_file": "weights.pt", "weights_sha256": "0" * 64,
        "arch": {"head": "pooled_linear"},
    }))  # fmt: skip
    with pytest.raises(
        DatasetError, match=r"has the labels \['Cardiomegaly', 'Effusion'\]; the student needs"
    ):
        D.student(_cfg(tmp_path, models_dir, init="cxr14_mobilenetv3_multilabel@9.0.0"))


def test_distillation_loss_goes_down_on_8_real_images(shared_data, models_dir, tmp_path):
    nih = shared_data / "nih"
    rows = read_labels_csv(nih / "labels.csv", nih / "images")[:8]
    teacher = D.read_teacher(
        nih / "chexnet_teacher.csv", [r.file for r in read_labels_csv(nih / "labels.csv", nih / "images")]
    )[:8]
    cfg = _cfg(tmp_path, models_dir, views=1)
    model, start, init_from, _ = D.student(cfg)
    assert init_from.startswith("cxr15_mobilenetv3@1.0.0")
    data = ClassificationData(nih / "images", rows, FINDINGS, (224, 224))
    feats = D.backbone_features(model, data, views=1, seed=0, augment=cfg.augment)
    assert feats.shape == (2, 8, 576) and not np.allclose(feats[0], feats[1])  # view 1 is augmented
    targets = D.soft_targets(data.targets, teacher, 0.5)
    head, losses = D.train_head(feats, targets, cfg)
    assert losses[0] == pytest.approx(np.log(2), abs=1e-6)  # all-zero start
    assert len(losses) > 5 and losses[-1] < 0.8 * losses[0]
    bce = lambda z: float(np.mean(np.logaddexp(0, z) - targets * z))  # noqa: E731
    assert bce(head.logits(feats[0])) < 0.8 * bce(np.zeros_like(targets))
    head.into(model)  # the fitted layer is what the written network computes from the image
    import torch

    with torch.inference_mode():
        x, _ = data.batch(range(8))
        full = model((x - D.MEAN) / D.STD).double().numpy()
        shipped = start((x - D.MEAN) / D.STD).double().numpy()
    assert full == pytest.approx(head.logits(feats[0]), abs=1e-3)
    # the reference 'start' scores the student's features, from the backbone rounded through fp16 as written
    assert shipped == pytest.approx(D.start_logits(start, feats[0]), abs=0.1)


def _miscalibrated(n=20000, slopes=(0.4, 2.0, 1.0), intercepts=(-1.5, 0.5, 0.0), seed=0):
    """Logits whose true probability is sigmoid(slope * logit + intercept), with labels drawn from it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (n, len(slopes)))
    p = calibration.sigmoid(np.array(slopes) * z + np.array(intercepts))
    return z, (rng.random(p.shape) < p).astype(np.float64), p


def test_platt_per_finding_recovers_a_known_miscalibration_and_lowers_ece():
    z, y, _ = _miscalibrated()
    slopes, intercepts = calibration.fit_platt_per_label(z, y)
    assert slopes == pytest.approx([0.4, 2.0, 1.0], abs=0.06)
    assert intercepts == pytest.approx([-1.5, 0.5, 0.0], abs=0.06)
    after = calibration.apply_platt(z, slopes, intercepts)
    before = calibration.sigmoid(z)
    rel = D.reliability_of(y, before, after)
    for k in (0, 1):  # the miscalibrated ones: ECE and Brier go down
        assert rel[k]["ece_after"] < 0.02 < rel[k]["ece_before"]
        assert rel[k]["brier_after"] < rel[k]["brier_before"]
    assert rel[2]["ece_before"] < 0.02 and rel[2]["ece_after"] < 0.02  # already calibrated: stays so


def test_platt_per_finding_makes_a_finding_ranked_backwards_flat():
    z, y, _ = _miscalibrated(n=2000, slopes=(1.0, -1.0), intercepts=(0.0, -1.0))
    slopes, intercepts = D.platt_per_finding(z, y)
    assert slopes[0] > 0.5 and slopes[1] == D.FLAT
    p = calibration.apply_platt(z, slopes, intercepts)
    assert np.ptp(p[:, 1]) < 1e-4 and p[:, 1].mean() == pytest.approx(y[:, 1].mean(), abs=0.01)


def test_cross_fitted_calibration_is_fitted_without_the_fold_it_scores():
    z, y, _ = _miscalibrated(n=3000, slopes=(0.5,), intercepts=(-1.0,))
    fold = np.arange(3000) % 3
    y_bad = y.copy()
    y_bad[fold == 0] = 1 - y_bad[fold == 0]  # fold 0's labels reversed: its own fit would not help it
    cross = D.cross_fitted_calibration(z, y_bad, fold)
    slopes, intercepts = calibration.fit_platt_per_label(z[fold != 0], y_bad[fold != 0])
    assert cross[fold == 0] == pytest.approx(
        calibration.apply_platt(z[fold == 0], slopes, intercepts), abs=1e-6
    )


def test_threshold_at_sensitivity_on_a_hand_made_case():
    pos = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])  # 10 positives
    neg = np.array([0.85, 0.35, 0.25, 0.15, 0.05, 0.01])
    y = np.r_[np.ones(10), np.zeros(6)].astype(bool)
    s = np.r_[pos, neg]
    # 9 of 10 positives flagged: the 9th highest positive score
    assert metrics.threshold_at_sensitivity(y, s, 0.9) == 0.2
    point = metrics.operating_point(y, s, 0.2)
    assert (
        point["sensitivity"] == 0.9 and point["specificity"] == 0.5
    )  # negatives under 0.2: 0.15, 0.05, 0.01
    assert metrics.threshold_at_sensitivity(y, s, 1.0) == 0.1
    assert metrics.threshold_at_sensitivity(y, s, 0.5) == 0.6  # 5 of 10
    assert metrics.threshold_at_sensitivity(y, s, 0.51) == 0.5  # 6 of 10: at least the share asked
    with pytest.raises(ValueError, match="at least one positive"):
        metrics.threshold_at_sensitivity(np.zeros(3, bool), np.ones(3), 0.9)


def test_operating_points_follow_the_rule_and_report_a_cross_fitted_sensitivity():
    rng = np.random.default_rng(4)
    y = np.zeros((400, 14))
    y[:, 0] = rng.random(400) < 0.3
    probs = np.clip(0.3 * y + rng.random((400, 14)) * 0.7, 0, 1)
    fold = np.arange(400) % 4
    points = D.operating_points(y, probs, probs, fold, 0.9)
    p = points[FINDINGS[0]]
    assert p["sensitivity"] >= 0.9 and p["threshold"] == metrics.threshold_at_sensitivity(
        y[:, 0] > 0, probs[:, 0], 0.9
    )
    assert 0.8 < p["sensitivity_cross_fitted"] < 1.0
    assert points[FINDINGS[1]] == {
        "threshold": 1.0,
        "n_pos": 0,
        "note": "no positives: the rule cannot apply",
    }


def test_ece_is_the_one_of_the_reliability_bins():
    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.6, 0.4])
    assert curves.calibration_bins(y, p)["ece"] == pytest.approx(0.25)


def test_the_registry_reads_one_slope_per_label_and_refuses_a_bad_one(tmp_path):
    from inference.registry import InvalidModelJson, spec_from_json

    d = tmp_path / "cxr14_mobilenetv3_multilabel" / "1.0.0"
    labels = ["Cardiomegaly", "Effusion"]
    meta = {
        "model_id": "cxr14_mobilenetv3_multilabel", "version": "1.0.0", "task": "classification",
        "family": "cxr14_mobilenetv3_multilabel", "labels": labels, "thresholds": dict.fromkeys(labels, 0.5),
        "activation": "sigmoid", "input_size": [224, 224], "weights_file": "weights.pt", "weights_sha256": "0" * 64,
        "calibration": {"slopes": {"Cardiomegaly": 0.5, "Effusion": 2.0}, "intercepts": {"Cardiomegaly": -1, "Effusion": 0}},
    }  # fmt: skip
    assert spec_from_json(meta, d).calibration["slopes"] == {"Cardiomegaly": 0.5, "Effusion": 2.0}
    for slopes in ({"Cardiomegaly": 0.5}, {"Cardiomegaly": 0.5, "Effusion": 0.0}):
        with pytest.raises(InvalidModelJson, match="one positive slope and one intercept per label"):
            spec_from_json(meta | {"calibration": meta["calibration"] | {"slopes": slopes}}, d)


def test_a_test_fraction_sets_whole_patients_aside_before_anything(shared_data, models_dir, tmp_path):
    nih = shared_data / "nih"
    cfg = D.DistillConfig(images=nih / "images", labels=nih / "labels.csv", teacher=nih / "chexnet_teacher.csv",
                          out=tmp_path, models_dir=models_dir, limit=60, test_fraction=0.3)  # fmt: skip
    learn, teacher, held, held_teacher = D.check_inputs(cfg)
    assert len(learn) + len(held) == 60 and len(teacher) == len(learn) and len(held_teacher) == len(held)
    assert 12 <= len(held) <= 24
    assert not {r.patient for r in learn} & {r.patient for r in held}  # a patient is on one side only
    everything = D.read_teacher(nih / "chexnet_teacher.csv", [r.file for r in read_labels_csv(nih / "labels.csv", nih / "images")])  # fmt: skip
    order = [r.file for r in read_labels_csv(nih / "labels.csv", nih / "images")]
    assert held_teacher[0] == pytest.approx(everything[order.index(held[0].file)])  # rows stay matched
    again = D.check_inputs(cfg)[2]
    assert [r.file for r in again] == [r.file for r in held]  # deterministic for a seed
    with pytest.raises(DatasetError, match="test-fraction"):
        D.check_inputs(D.DistillConfig(**{**cfg.__dict__, "test_fraction": 1.0}))
