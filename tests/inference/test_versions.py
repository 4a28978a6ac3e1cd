"""Versioned registry: trained model versions found from model.json folders, chosen, resolved and run."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from inference.models import anatomy_unet_smp, cxr14_mobilenetv3_multilabel
from inference.registry import Registry, version_key
from inference.runner import Runner
from inference.training.common import base_meta, write_version
from inference.types import ANATOMY_LABELS, SCORE_KINDS, ModelRef, ModelUnavailable

TINY_UNET = {"encoder_name": "tu-mobilenetv3_small_050", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def write_anatomy(root, version, created="2025-01-01T00:00:00+00:00", seed=0, **extra):
    torch.manual_seed(seed)
    model = anatomy_unet_smp.make(TINY_UNET)
    meta = base_meta(model_id="anatomy_unet_smp", version=version, task="segmentation",
                     family="anatomy_unet_smp", argv=["test"])  # fmt: skip
    meta |= {"created": created, "labels": list(ANATOMY_LABELS), "input_size": [64, 64], "arch": TINY_UNET,
             "mean": 0.5, "std": 0.25, "normalisation": "test", "validation": {"dice": {"lungs": 0.5}}, **extra}  # fmt: skip
    write_version(root / "anatomy_unet_smp" / version, model, meta)


def write_classifier(root, version="0.1.0", **extra):
    torch.manual_seed(0)
    model = cxr14_mobilenetv3_multilabel.make()
    labels = list(cxr14_mobilenetv3_multilabel.FINDINGS)
    meta = base_meta(model_id="cxr14_mobilenetv3_multilabel", version=version, task="classification",
                     family="cxr14_mobilenetv3_multilabel", argv=["test"])  # fmt: skip
    meta |= {"labels": labels, "thresholds": {k: 0.5 for k in labels}, "activation": "sigmoid",
             "input_size": [64, 64], "mean": 0.485, "std": 0.229, **extra}  # fmt: skip
    write_version(root / "cxr14_mobilenetv3_multilabel" / version, model, meta)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    assets, trained = tmp_path_factory.mktemp("assets"), tmp_path_factory.mktemp("trained")
    write_anatomy(assets, "1.0.0", "2025-01-01T00:00:00+00:00", seed=0)
    write_anatomy(trained, "1.10.0", "2025-01-03T00:00:00+00:00", seed=1)  # newest: 1.10 > 1.9
    write_anatomy(trained, "1.9.0", "2025-01-02T00:00:00+00:00", seed=2)
    write_classifier(trained)
    return assets, trained


@pytest.fixture(scope="module")
def reg(models_dir, roots):
    return Registry(models_dir, trained_roots=list(roots))


def test_version_order_is_numeric():
    assert sorted(["1.10.0", "1.9.0", "1.0.0", "2.0.0"], key=version_key) == [
        "1.0.0",
        "1.9.0",
        "1.10.0",
        "2.0.0",
    ]


def test_versions_get_and_resolve(reg):
    assert [s.version for s in reg.versions("anatomy_unet_smp")] == ["1.10.0", "1.9.0", "1.0.0"]
    assert reg.get("anatomy_unet_smp").version == "1.10.0"
    assert reg.get("anatomy_unet_smp", "1.9.0").version == "1.9.0"
    assert reg.resolve("anatomy_unet_smp@1.0.0").ref == "anatomy_unet_smp@1.0.0"
    assert reg.resolve("anatomy_unet_jsrt").builtin and reg.resolve("anatomy_unet_jsrt").version == "1.0.0"
    assert not reg.get("anatomy_unet_smp").builtin
    assert reg.get("anatomy_unet_smp", "1.0.0").metrics == {"dice": {"lungs": 0.5}}
    with pytest.raises(KeyError, match=r"known versions: \['1.10.0', '1.9.0', '1.0.0'\]"):
        reg.resolve("anatomy_unet_smp@3.0.0")
    with pytest.raises(KeyError, match="unknown model id 'nope'; known: .*anatomy_unet_smp"):
        reg.resolve("nope@1")
    with pytest.raises(KeyError, match="not ID or ID@VERSION"):
        reg.resolve("anatomy_unet_smp@")


def test_for_task_prefers_the_active_version_and_falls_back(reg, roots, tmp_path):
    # Without an admin choice the built-in model stays the default, as before versions existed.
    assert reg.for_task("segmentation").ref == "anatomy_unet_jsrt@1.0.0"
    assert reg.for_task("segmentation", prefer=("anatomy_unet_smp", "1.9.0")).ref == "anatomy_unet_smp@1.9.0"
    assert reg.for_task("classification", ("cxr14_mobilenetv3_multilabel", "0.1.0")).activation == "sigmoid"
    # Unknown version, wrong task: fallback.
    assert reg.for_task("segmentation", prefer=("anatomy_unet_smp", "9.9.9")).ref == "anatomy_unet_jsrt@1.0.0"
    assert (
        reg.for_task("bone_suppression", prefer=("anatomy_unet_smp", "1.9.0")).model_id
        == "bone_suppression_ae"
    )


def test_damaged_and_invalid_versions_are_unavailable_with_reasons(models_dir, roots, tmp_path):
    write_anatomy(tmp_path, "2.0.0")
    write_anatomy(tmp_path, "2.1.0")
    weights = tmp_path / "anatomy_unet_smp" / "2.1.0" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = tmp_path / "anatomy_unet_smp" / "2.2.0"
    bad.mkdir()
    (bad / "model.json").write_text("{not json")
    reg = Registry(models_dir, trained_roots=[*roots, tmp_path])
    reasons = reg.unavailable()
    assert set(reasons) == {"anatomy_unet_smp@2.1.0", "anatomy_unet_smp@2.2.0"}
    assert reasons["anatomy_unet_smp@2.1.0"].startswith("sha256 mismatch")
    assert "JSONDecodeError" in reasons["anatomy_unet_smp@2.2.0"]
    # The newest is damaged: get() still names it, check() refuses it; the admin's choice falls back.
    assert reg.get("anatomy_unet_smp").version == "2.1.0"
    with pytest.raises(ModelUnavailable, match="sha256 mismatch") as err:
        reg.check("anatomy_unet_smp")
    assert err.value.model_id == "anatomy_unet_smp@2.1.0"
    assert reg.for_task("segmentation", ("anatomy_unet_smp", "2.1.0")).ref == "anatomy_unet_jsrt@1.0.0"
    assert reg.problem("anatomy_unet_smp", "2.0.0") is None
    # A model.json whose folder does not match its id/version is refused, not silently renamed.
    moved = tmp_path / "anatomy_unet_smp" / "7.0.0"
    (tmp_path / "anatomy_unet_smp" / "2.0.0").rename(moved)
    assert (
        "but lies in anatomy_unet_smp/7.0.0"
        in Registry(models_dir, [tmp_path]).unavailable()["anatomy_unet_smp@7.0.0"]
    )


def test_bad_runner_settings_make_a_version_unavailable_not_an_analysis_fail(models_dir, tmp_path):
    labels = cxr14_mobilenetv3_multilabel.FINDINGS
    partial = {"slope": 0.3, "intercepts": {labels[0]: 0.0}}  # one intercept for 14 findings
    write_classifier(tmp_path, "0.1.0", calibration=partial)
    write_anatomy(tmp_path, "3.0.0", contrast_stretch={"percentiles": [99, 1]})
    write_anatomy(tmp_path, "3.1.0", test_time_augmentation={"views": [{"scale": 0}]})
    write_anatomy(tmp_path, "3.2.0", contrast_stretch={"low": 1})
    write_anatomy(tmp_path, "3.3.0", test_time_augmentation={"views": [{"shift": ["left", 0]}]})
    write_anatomy(tmp_path, "3.4.0", test_time_augmentation={"views": [{"shift": [3, 0]}]})
    full = {"slope": 0.3, "intercepts": {k: 0.0 for k in labels}}
    write_classifier(tmp_path, "0.2.0", calibration=full, activation="softmax")  # Platt is per sigmoid label
    reasons = Registry(models_dir, trained_roots=[tmp_path]).unavailable()
    assert "unreadable runner setting: ValueError" in reasons["anatomy_unet_smp@3.3.0"]
    assert "within ±1" in reasons["anatomy_unet_smp@3.4.0"]
    assert "sigmoid models only" in reasons["cxr14_mobilenetv3_multilabel@0.2.0"]
    assert "one intercept per label" in reasons["cxr14_mobilenetv3_multilabel@0.1.0"]
    assert "0 <= low < high <= 100" in reasons["anatomy_unet_smp@3.0.0"]
    assert "positive scale" in reasons["anatomy_unet_smp@3.1.0"]
    assert "unreadable runner setting: KeyError" in reasons["anatomy_unet_smp@3.2.0"]


def test_runner_runs_the_exact_version_and_caches_per_version(reg, read_gray, dataset):
    runner = Runner(reg, "cpu")
    img = read_gray(next(iter(sorted((dataset("jsrt") / "images512").glob("*.png")))))
    old = runner.segment_anatomy(img, "anatomy_unet_smp@1.9.0")
    new = runner.segment_anatomy(img, "anatomy_unet_smp")
    also_old = runner.segment_anatomy(img, "anatomy_unet_smp", version="1.9.0")
    spec_old = reg.get("anatomy_unet_smp", "1.9.0")
    assert old.model == also_old.model == ModelRef("anatomy_unet_smp", "1.9.0", spec_old.weights_sha256)
    assert new.model.version == "1.10.0" and new.model.weights_sha256 != old.model.weights_sha256
    assert old.label_map.shape == img.shape and old.label_map.dtype == np.uint8
    assert runner.load(spec_old) is runner.load("anatomy_unet_smp", "1.9.0")
    assert runner.load("anatomy_unet_smp", "1.9.0") is not runner.load("anatomy_unet_smp", "1.10.0")


def test_multilabel_classifier_scores_are_sigmoids_with_model_json_thresholds(reg, read_gray, dataset):
    runner = Runner(reg, "cpu")
    img = read_gray(next(iter(sorted((dataset("nih") / "images").glob("*.png")))))
    res = runner.classify(img, "cxr14_mobilenetv3_multilabel@0.1.0")
    assert res.score_kind == SCORE_KINDS["sigmoid"] and res.model.version == "0.1.0"
    assert len(res.probabilities) == 14 and "No Finding" not in res.probabilities
    assert res.thresholds == {k: 0.5 for k in res.probabilities}
    assert res.positive == {k: v >= 0.5 for k, v in res.probabilities.items()}
    assert all(0 < v < 1 for v in res.probabilities.values())
    assert runner.gradcam(img, "Cardiomegaly", "cxr14_mobilenetv3_multilabel@0.1.0").shape == img.shape
    shipped = runner.classify(img)  # the default stays the shipped softmax model
    assert shipped.score_kind == SCORE_KINDS["softmax"] and shipped.model.model_id == "cxr15_mobilenetv3"


def test_a_calibrated_classifier_reports_platt_probabilities_of_its_logits(
    tmp_path, models_dir, read_gray, dataset
):
    from inference.calibration import apply_platt

    labels = cxr14_mobilenetv3_multilabel.FINDINGS
    intercepts = {label: -1.0 + 0.1 * i for i, label in enumerate(labels)}
    write_classifier(tmp_path, "0.1.0")  # the same weights (seed 0) without and with calibration
    write_classifier(
        tmp_path, "0.2.0", calibration={"method": "test", "slope": 0.3, "intercepts": intercepts}
    )
    runner = Runner(Registry(models_dir, trained_roots=[tmp_path]), "cpu")
    img = read_gray(next(iter(sorted((dataset("nih") / "images").glob("*.png")))))
    raw = runner.classify(img, "cxr14_mobilenetv3_multilabel@0.1.0").probabilities
    cal = runner.classify(img, "cxr14_mobilenetv3_multilabel@0.2.0").probabilities
    logits = np.log([raw[k] / (1 - raw[k]) for k in labels])[None]
    expected = apply_platt(logits, 0.3, [intercepts[k] for k in labels])[0]
    assert [cal[k] for k in labels] == pytest.approx(expected.tolist(), abs=1e-4)
    assert runner.classify(img, "cxr14_mobilenetv3_multilabel@0.2.0").score_kind == SCORE_KINDS["calibrated"]
    assert cal != raw


def test_model_json_carries_provenance(roots):
    meta = json.loads((roots[1] / "anatomy_unet_smp" / "1.9.0" / "model.json").read_text())
    assert meta["weights_dtype"] == "float16" and len(meta["weights_sha256"]) == 64
    assert meta["command"].endswith("test") and meta["code_version"]


def test_committed_models_are_listed_available_and_as_good_as_their_model_json(registry, dataset):
    """assets/models ships the project's own trained versions (README "Training your own models")."""
    from inference import evaluation

    refs = {s.ref for s in registry.available()}
    committed = {f"anatomy_unet_smp@1.{i}.0" for i in range(4)} | {"cxr14_mobilenetv3_multilabel@1.0.0"}
    assert committed <= refs
    old = registry.resolve("anatomy_unet_smp@1.0.0")
    assert old.input_size == (256, 256) and "contrast_stretch" not in old.metadata
    seg = registry.resolve("anatomy_unet_smp")  # ID alone: the newest version
    assert seg.ref in refs and seg.input_size == (512, 512) and seg.arch == old.arch
    assert seg.metadata["contrast_stretch"] == {"percentiles": [0.5, 99.5]}
    assert len(seg.metadata["test_time_augmentation"]["views"]) == seg.metrics["test_time_views"] == 5
    assert seg.metrics["dice"]["clavicles"]["mean"] > 0.90 and seg.metrics["dice"]["lungs"]["mean"] > 0.97
    # Recompute Dice on its validation images: the stored figures are exactly what the runner gives.
    jsrt = dataset("jsrt")
    files = seg.metadata["data"]["val_files"]
    pairs = [(jsrt / "images512" / f, jsrt / "masks512" / f) for f in files]
    report = evaluation.evaluate_segmentation(Runner(registry, "cpu"), seg, pairs)
    assert report["n_images"] == 39 and report["test_time_views"] == 5
    for name in ("lungs", "heart", "clavicles"):
        assert report["dice"][name]["mean"] == pytest.approx(seg.metrics["dice"][name]["mean"], abs=1e-4)
    assert report["model"] == {
        "id": "anatomy_unet_smp",
        "version": seg.version,
        "weights_sha256": seg.weights_sha256,
    }


def test_the_committed_calibrated_classifier_reproduces_its_figures(registry, dataset):
    """cxr14_mobilenetv3_multilabel@1.1.0: the 1.0.0 recipe plus Platt calibration; same ranking power, and
    its probabilities average to each finding's rate on the images the calibration was fitted on."""
    from inference import evaluation
    from inference.training.data import read_labels_csv

    cls = registry.resolve("cxr14_mobilenetv3_multilabel@1.1.0")
    assert cls.score_kind == "calibrated" and cls.metadata["calibration"]["slope"] > 0
    assert all(0.005 < t < 0.6 for t in cls.thresholds.values())  # 1.0.0's went down to 1e-8
    nih = dataset("nih")
    val = set(cls.metadata["data"]["val_files"])
    rows = [r for r in read_labels_csv(nih / "labels.csv", nih / "images") if r.file in val]
    report = evaluation.evaluate_classification(Runner(registry, "cpu"), cls, nih / "images", rows, n_boot=10)
    assert report["n_images"] == 130 and report["mean_auc"] == pytest.approx(
        cls.metrics["mean_auc"], abs=1e-4
    )
    for label, entry in report["per_finding"].items():
        assert entry["mean_score"] == pytest.approx(entry["rate"], abs=0.01), label
        assert entry["at_threshold"]["threshold"] == cls.thresholds[label]


def _blob(side=96):
    yy, xx = np.mgrid[:side, :side] / side
    return np.exp(-((xx - 0.35) ** 2 / 0.02 + (yy - 0.6) ** 2 / 0.05)).astype(np.float32)


def test_test_time_views_are_warped_back_onto_the_image():
    """A per-pixel model commutes with any warp, so averaging its shifted and zoomed views must give back its
    plain answer; a view mapped back with the wrong sign or scale would move the blob and fail this."""
    from inference.runner import _tta_log_probs

    model = nn.Conv2d(1, 4, 1)
    with torch.no_grad():
        model.weight[:] = torch.tensor([-8.0, 8.0, 0.0, 0.0]).view(4, 1, 1, 1)
        model.bias[:] = torch.tensor([4.0, -4.0, -9.0, -9.0])
    x = torch.from_numpy(_blob())[None, None]
    plain = model(x).argmax(1)
    assert 0.05 < plain.float().mean() < 0.5  # the blob is class 1, the rest class 0
    for views in ([{"shift": [0.1, -0.05]}], [{"scale": 0.8}, {"scale": 1.2, "shift": [-0.08, 0.06]}]):
        tta = _tta_log_probs(model, x, views, mean=0.0, std=1.0).argmax(1)
        inner = (slice(None), slice(12, -12), slice(12, -12))  # what every view saw
        assert (tta[inner] == plain[inner]).float().mean() > 0.995, views
    same = _tta_log_probs(model, x, [{"scale": 1.0}], 0.0, 1.0)
    assert torch.allclose(same.exp(), model(x).softmax(1), atol=1e-5)


def test_a_version_with_test_time_views_runs_each_view(tmp_path, models_dir, read_gray, dataset, monkeypatch):
    from inference import runner as runner_module
    from inference.training.segmentation import TTA_VIEWS

    write_anatomy(tmp_path, "2.0.0")
    write_anatomy(tmp_path, "2.1.0", test_time_augmentation={"views": list(TTA_VIEWS)})
    runner = Runner(Registry(models_dir, trained_roots=[tmp_path]), "cpu")
    img = read_gray(sorted((dataset("jsrt") / "images512").glob("*.png"))[0])
    seen = {}  # version -> batch sizes of the forward calls
    results = {}
    for version in ("2.0.0", "2.1.0"):
        module = runner.load(f"anatomy_unet_smp@{version}")
        hook = module.register_forward_hook(
            lambda m, i, o, v=version: seen.setdefault(v, []).append(len(i[0]))
        )
        results[version] = runner.segment_anatomy(img, f"anatomy_unet_smp@{version}")
        hook.remove()
        assert results[version].label_map.shape == img.shape and results[version].model.version == version
    # On the CPU each view is one forward call; on a GPU they go as one batch, which gives the same answer
    # for networks whose BatchNorms use running statistics (smp), and is refused for the shipped one.
    assert seen == {"2.0.0": [1], "2.1.0": [1] * len(TTA_VIEWS)}
    assert runner_module._batch_statistics(runner.load("anatomy_unet_jsrt"))
    assert not runner_module._batch_statistics(runner.load("anatomy_unet_smp@2.1.0"))
    monkeypatch.setattr(runner_module, "_views_one_at_a_time", lambda model, device: False)
    batched = runner.segment_anatomy(img, "anatomy_unet_smp@2.1.0").label_map
    assert (batched == results["2.1.0"].label_map).mean() > 0.999


def test_a_contrast_stretched_version_reads_a_washed_out_export_as_the_original(
    tmp_path, models_dir, dataset
):
    from inference.training.data import read_gray

    write_anatomy(tmp_path, "3.0.0", contrast_stretch={"percentiles": [0.5, 99.5]})
    runner = Runner(Registry(models_dir, trained_roots=[tmp_path]), "cpu")
    img = read_gray(sorted((dataset("jsrt") / "images512").glob("*.png"))[1])
    washed = (0.94 + 0.06 * img).astype(np.float32)
    plain = runner.segment_anatomy(img, "anatomy_unet_smp@3.0.0").label_map
    same = runner.segment_anatomy(washed, "anatomy_unet_smp@3.0.0").label_map
    assert (plain == same).mean() > 0.999


def _evidence(root, versions: dict, max_relative_time=2.0):
    from inference import evidence

    path = evidence.path_for(root, "segmentation")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": "segmentation", "versions": versions, "rule": {
        "set": "lungs", "metric": "lungs_dice", "max_relative_time": max_relative_time}}))  # fmt: skip


def _measured(spec, dice, relative_time):
    return {"weights_sha256": spec.weights_sha256, "relative_time": relative_time,
            "metrics": {"lungs": {"lungs_dice": {"mean": dice}}}}  # fmt: skip


def test_variants_run_fewer_views_under_their_own_version(tmp_path, models_dir):
    from inference.training.segmentation import TTA_VIEWS

    write_anatomy(tmp_path, "2.1.0", test_time_augmentation={"views": list(TTA_VIEWS)},
                  variants=[{"name": "1view", "test_time_views": 1}, {"name": "Bad!", "test_time_views": 1},
                            {"name": "toomany", "test_time_views": 99}])  # fmt: skip
    reg = Registry(models_dir, trained_roots=[tmp_path])
    full, fast = reg.resolve("anatomy_unet_smp@2.1.0"), reg.resolve("anatomy_unet_smp@2.1.0+1view")
    assert len(full.test_time_views) == len(TTA_VIEWS) and fast.test_time_views == full.test_time_views[:1]
    assert fast.weights_sha256 == full.weights_sha256 and fast.provenance()["version"] == "2.1.0+1view"
    assert {s.version for s in reg.versions("anatomy_unet_smp")} == {"2.1.0", "2.1.0+1view"}  # bad ones left out


def test_the_default_follows_the_evidence_within_the_time_budget(tmp_path, models_dir):
    write_anatomy(tmp_path, "2.0.0", seed=1)
    write_anatomy(tmp_path, "2.1.0", seed=2)
    reg = Registry(models_dir, trained_roots=[tmp_path])
    builtin, a, b = (reg.resolve(r) for r in ("anatomy_unet_jsrt", "anatomy_unet_smp@2.0.0", "anatomy_unet_smp@2.1.0"))
    assert reg.for_task("segmentation").ref == builtin.ref  # no evidence: the old order
    # b is best but too slow for the viewer; a beats the built-in within the budget.
    _evidence(tmp_path, {builtin.ref: _measured(builtin, 0.80, 1.0), a.ref: _measured(a, 0.85, 1.3),
                         b.ref: _measured(b, 0.90, 6.0)})  # fmt: skip
    assert reg.for_task("segmentation").ref == a.ref
    # an admin's choice still wins
    assert reg.for_task("segmentation", prefer=("anatomy_unet_smp", "2.1.0")).ref == b.ref
    # a measurement of other weights does not count: a stale entry falls back to the next measured version
    _evidence(tmp_path, {builtin.ref: _measured(builtin, 0.80, 1.0),
                         a.ref: {**_measured(a, 0.85, 1.3), "weights_sha256": "0" * 64}})  # fmt: skip
    assert reg.for_task("segmentation").ref == builtin.ref
    # an unreadable evidence file is ignored (logged), not fatal
    (tmp_path / "evidence" / "segmentation.json").write_text("{not json")
    assert reg.for_task("segmentation").ref == builtin.ref


def test_the_committed_distilled_classifier_records_its_evidence_and_rule(registry):
    """cxr14_mobilenetv3_multilabel@1.2.0 (distilled from CheXNet, README "Distillation"): its weights check, its
    default thresholds are the sensitivity-0.9 points it records, calibrated per finding out of fold, and the
    written fp16 network gave the probabilities it was measured with."""
    cls = registry.check(registry.resolve("cxr14_mobilenetv3_multilabel@1.2.0"))
    meta = cls.metadata
    assert cls.arch["head"] == "pooled_linear" and cls.score_kind == "calibrated"
    assert set(cls.calibration["slopes"]) == set(cls.labels) and min(cls.calibration["slopes"].values()) > 0
    assert meta["thresholds_rule"].startswith("sensitivity >= 0.9 per finding")
    points = meta["validation"]["operating_points"]
    for label in cls.labels:
        assert cls.thresholds[label] == points[label]["threshold"] and points[label]["sensitivity"] >= 0.9
    cv = meta["validation"]["cross_validation"]
    assert cv["all"]["n_images"] == 435 and cv["multi_finding"]["n_images"] == 173
    assert meta["validation"]["runner_check"]["max_abs_difference"] < 1e-3
    assert "--teacher" in meta["command"] and meta["data"]["teacher_sha256"]


def test_the_newest_measurement_wins_and_a_malformed_entry_is_ignored(tmp_path, models_dir):
    from inference import evidence

    shipped, local = tmp_path / "assets", tmp_path / "trained"
    write_anatomy(shipped, "2.0.0", seed=1)
    reg = Registry(models_dir, trained_roots=[shipped, local])
    builtin, a = reg.resolve("anatomy_unet_jsrt"), reg.resolve("anatomy_unet_smp@2.0.0")
    _evidence(shipped, {builtin.ref: _measured(builtin, 0.80, 1.0), a.ref: _measured(a, 0.85, 1.3)})
    assert reg.for_task("segmentation").ref == a.ref
    # an installation's own, later measurement (in <models dir>/trained) overrides the shipped file
    _evidence(local, {builtin.ref: _measured(builtin, 0.90, 1.0), a.ref: _measured(a, 0.85, 1.3)})
    path = evidence.path_for(local, "segmentation")
    path.write_text(path.read_text().replace('"task"', '"measured": "2030-01-01T00:00:00+00:00", "task"'))
    assert reg.for_task("segmentation").ref == builtin.ref
    # a hand-edited entry without a numeric mean makes the file unusable (logged), never an analysis fail
    _evidence(local, {builtin.ref: {"weights_sha256": builtin.weights_sha256, "relative_time": 1.0,
                                    "metrics": {"lungs": {"lungs_dice": {"mean": "high"}}}}})  # fmt: skip
    assert reg.for_task("segmentation").ref == a.ref  # the shipped file again


def test_a_candidate_never_runs_by_default_and_a_variant_goes_with_its_refused_version(tmp_path, models_dir):
    write_anatomy(tmp_path, "2.0.0", seed=1, status="candidate")
    reg = Registry(models_dir, trained_roots=[tmp_path])
    cand, builtin = reg.resolve("anatomy_unet_smp@2.0.0"), reg.resolve("anatomy_unet_jsrt")
    _evidence(tmp_path, {builtin.ref: _measured(builtin, 0.80, 1.0), cand.ref: _measured(cand, 0.95, 1.0)})
    assert reg.for_task("segmentation").ref == builtin.ref  # best measured, but not promoted
    assert reg.for_task("segmentation", prefer=("anatomy_unet_smp", "2.0.0")).ref == cand.ref  # an admin's choice
    # a version defined twice with other weights is refused, and so is its variant
    from inference.training.segmentation import TTA_VIEWS

    other = tmp_path / "other"
    for root, seed in ((tmp_path, 3), (other, 4)):
        write_anatomy(root, "3.0.0", seed=seed, test_time_augmentation={"views": list(TTA_VIEWS)},
                      variants=[{"name": "1view", "test_time_views": 1}])  # fmt: skip
    reg = Registry(models_dir, trained_roots=[tmp_path, other])
    versions = {s.version for s in reg.versions("anatomy_unet_smp")}
    assert "3.0.0" not in versions and "3.0.0+1view" not in versions


def test_a_version_that_may_be_worse_than_the_reference_does_not_become_the_default():
    from inference import evidence

    def entry(mean, ci=None):
        e = {"weights_sha256": "s", "relative_time": 1.0, "metrics": {"set": {"m": {"mean": mean}}}}
        return e | ({"vs_reference": {"difference": mean - 0.80, "ci95": ci}} if ci else {})

    data = {"rule": {"set": "set", "metric": "m", "max_relative_time": 2.0, "time_reference": "ref@1",
                     "non_inferiority_margin": 0.01},
            "versions": {"ref@1": entry(0.80), "tie@1": entry(0.81, [-0.05, 0.07]),
                         "close@1": entry(0.805, [-0.009, 0.02]), "unpaired@1": entry(0.9)}}  # fmt: skip
    current = dict.fromkeys(data["versions"], "s")
    # the tie's interval reaches -0.05: it may be worse by more than the margin, so the reference stays ahead
    # of it; a version measured without its paired difference never qualifies
    assert evidence.ranking(data, current) == ["close@1", "ref@1", "unpaired@1", "tie@1"]
    data["rule"]["non_inferiority_margin"] = 0.06  # a looser margin lets the tie in, and it is the best
    assert evidence.chosen(data, current) == "tie@1"
    del data["rule"]["non_inferiority_margin"]  # files written before the margin: the best mean within budget
    assert evidence.chosen(data, current) == "unpaired@1"


def test_equal_means_are_ordered_by_the_rules_tie_break_and_a_bad_one_is_refused():
    from inference import evidence

    def entry(mean, ece=None):
        figures = {"m": {"mean": mean}} | ({"ece": {"mean": ece}} if ece is not None else {})
        return {"weights_sha256": "s", "relative_time": 1.0, "metrics": {"set": figures},
                "vs_reference": {"difference": 0.0, "ci95": [0.0, 0.0]}}  # fmt: skip

    rule = {"set": "set", "metric": "m", "max_relative_time": 2.0, "time_reference": "ref@1",
            "non_inferiority_margin": 0.01, "tie_break": {"metric": "ece", "decimals": 3}}  # fmt: skip
    data = {"rule": rule, "versions": {"ref@1": entry(0.6121, 0.085), "calibrated@1": entry(0.61204, 0.051),
                                       "unmeasured@1": entry(0.6120), "better@1": entry(0.6135, 0.2)}}  # fmt: skip
    current = dict.fromkeys(data["versions"], "s")
    # a higher mean to the 3 decimals still wins whatever its calibration; equal ones go by the lower ECE,
    # and a version without the tie-break figure comes after those with it
    assert evidence.ranking(data, current) == ["better@1", "calibrated@1", "ref@1", "unmeasured@1"]
    # without the tie-break figure on either side, the exact means decide, not the names
    data["versions"] |= {"a_worse@1": entry(0.60111), "z_better@1": entry(0.60149)}
    current = dict.fromkeys(data["versions"], "s")
    assert evidence.ranking(data, current)[-2:] == ["z_better@1", "a_worse@1"]
    del data["versions"]["a_worse@1"], data["versions"]["z_better@1"]
    current = dict.fromkeys(data["versions"], "s")
    del rule["tie_break"]  # without one, the exact means decide
    assert evidence.ranking(data, current)[1:3] == ["ref@1", "calibrated@1"]
    for bad in ({"metric": "ece"}, {"metric": 3, "decimals": 3}, "ece"):
        with pytest.raises(evidence.EvidenceError, match="tie_break"):
            evidence.check(data | {"rule": rule | {"tie_break": bad}})


def test_a_version_on_the_shipped_weights_names_them_exactly(tmp_path, models_dir):
    """`"weights_of"`: a calibrated copy of the shipped classifier runs its weights file from the models folder,
    not a copy; any other file or sha256 makes the version unavailable with the reason."""
    shipped = Registry(models_dir, trained_roots=[]).resolve("cxr15_mobilenetv3")
    labels = [label for label in shipped.labels if label != "No Finding"]
    meta = {
        "model_id": "cxr14_mobilenetv3_multilabel", "version": "9.0.0", "task": "classification",
        "family": "cxr14_mobilenetv3_multilabel", "labels": labels, "thresholds": dict.fromkeys(labels, 0.1),
        "activation": "sigmoid", "input_size": [224, 224], "arch": {"head": "logsoftmax"},
        "weights_of": shipped.ref, "weights_file": shipped.weights_file, "weights_sha256": shipped.weights_sha256,
        "calibration": {"slopes": dict.fromkeys(labels, 0.5), "intercepts": dict.fromkeys(labels, -1.0)},
        "mean": shipped.mean, "std": shipped.std,
    }  # fmt: skip
    d = tmp_path / "cxr14_mobilenetv3_multilabel" / "9.0.0"
    d.mkdir(parents=True)
    (d / "model.json").write_text(json.dumps(meta))
    reg = Registry(models_dir, trained_roots=[tmp_path])
    spec = reg.check("cxr14_mobilenetv3_multilabel@9.0.0")
    assert reg.weights_path(spec) == models_dir / shipped.weights_file and not (d / shipped.weights_file).exists()
    for change, reason in (({"weights_of": "cxr15_mobilenetv3@7.0.0"}, "not a built-in model version"),
                           ({"weights_sha256": "0" * 64}, "must be that model's"),
                           ({"arch": {"head": "linear"}}, "needs the logsoftmax head"),
                           ({"labels": labels[::-1]}, "the 14 findings in their order"),
                           ({"family": "anatomy_unet_smp"}, "cannot run a built-in model's weights"),
                           ({"task": "segmentation"}, "cannot run a segmentation version")):  # fmt: skip
        (d / "model.json").write_text(json.dumps(meta | change))
        broken = Registry(models_dir, trained_roots=[tmp_path]).unavailable()
        assert reason in broken["cxr14_mobilenetv3_multilabel@9.0.0"]
