"""Evaluate a model version on a labelled folder, through the runner (exactly as the app runs it).

Every function returns a JSON-ready dict naming the model version (`model`: id, version, weights_sha256).
- segmentation: Dice per class at each label map's native resolution (mean, min, median, per image);
- classification: AUC per finding with 95% bootstrap interval and ROC points, mean AUC (all images and the
  images with two or more findings);
- bone suppression: MAE and SSIM of the model's soft-tissue image against the dual-energy one, beside the same
  figures for the unprocessed radiograph;
- ctr: how well the cardiothoracic ratio from an anatomy model separates Cardiomegaly (AUC).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inference import metrics
from inference.postprocess import anatomy_problems, cardiothoracic_ratio
from inference.runner import Runner
from inference.training.common import progress as _progress
from inference.training.data import (
    DatasetError,
    LabelledImage,
    paired_files,
    read_gray,
    read_label_map,
)
from inference.types import ANATOMY_LABELS, ModelSpec

CLASSES = {i: name for i, name in enumerate(ANATOMY_LABELS) if i}  # label-map value -> name, no background


N_BOOT = 1000  # bootstrap resamples unless a caller asks for others


def _summary(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "ci95": list(metrics.bootstrap_mean_ci(v, n_boot, seed=seed)),
            "min": float(v.min()), "median": float(np.median(v)), "n": int(v.size)}  # fmt: skip


def evaluate_segmentation(
    runner: Runner,
    model: str | ModelSpec,
    pairs: Sequence[tuple[Path, Path]],
    per_image: bool = True,
    progress: bool = False,
    n_boot: int = N_BOOT,
    seed: int = 0,
    against: str | ModelSpec | None = None,
) -> dict:
    """Dice per class: the runner's label map (logits upsampled to the image, speckles removed) against the
    label map at its native resolution; the mean with a 95% bootstrap interval over images. `against`: another
    version on the same images, and the paired difference of the mean Dice per class (model minus it)."""
    if against is not None:
        report = evaluate_segmentation(runner, model, pairs, True, progress, n_boot, seed)
        other = evaluate_segmentation(runner, against, pairs, True, progress, n_boot, seed)
        report["against"] = {"model": other["model"], "dice": other["dice"], "model_minus_against": {
            name: metrics.paired_bootstrap_mean_diff([r[name] for r in report["per_image"]],
                                                     [r[name] for r in other["per_image"]], n_boot, seed)
            for name in CLASSES.values()}}  # fmt: skip
        if not per_image:
            del report["per_image"]
        return report
    spec = runner.registry.check(model)
    rows, shapes = [], set()
    for img_path, mask_path in _progress(pairs, len(pairs), f"eval {spec.ref}", progress):
        truth = read_label_map(mask_path)
        shapes.add(f"{truth.shape[1]}x{truth.shape[0]}")
        pred = runner.segment_anatomy(read_gray(img_path), spec).label_map
        if pred.shape != truth.shape:
            raise DatasetError(f"{img_path.name}: image {pred.shape} and label map {truth.shape} differ")
        rows.append({"file": img_path.name, **metrics.dice_per_class(pred, truth, CLASSES)})
    out = {
        "task": "segmentation",
        "model": spec.provenance(),
        "resolution": f"each label map's native resolution ({', '.join(sorted(shapes))}); network input "
        f"{spec.input_size[1]}x{spec.input_size[0]}, logits upsampled bilinearly",
        "test_time_views": len(spec.test_time_views) or 1,
        "n_images": len(rows),
        "dice": {name: _summary([r[name] for r in rows], n_boot, seed) for name in CLASSES.values()},
        "bootstrap": {"resamples": n_boot, "seed": seed, "interval": "95% percentile, images resampled"},
    }
    if per_image:
        out["per_image"] = rows
    return out


def lowest_dice_cases(
    runner: Runner, specs: Sequence[ModelSpec], pairs: Sequence[tuple[Path, Path]], report: dict, k: int = 4
) -> list[dict]:
    """Per class ({"class", "value", "cases"}), the `k` images with the lowest Dice in `report` (from
    evaluate_segmentation, with per_image), each with what the failure gallery draws: the radiograph, its true
    label map, and each version's label map and Dice.

    Only these images are segmented again (at most 3k), so the evaluation itself keeps no label maps."""
    rows = report["per_image"]
    worst = {name: [r["file"] for r in sorted(rows, key=lambda r: r[name])[:k]] for name in CLASSES.values()}
    paths = {img.name: (img, mask) for img, mask in pairs}
    seen: dict[str, dict] = {}
    for name in dict.fromkeys(f for files in worst.values() for f in files):
        img_path, mask_path = paths[name]
        image, truth = read_gray(img_path), read_label_map(mask_path)
        maps = [runner.segment_anatomy(image, spec).label_map for spec in specs]
        seen[name] = {"file": name, "image": image, "truth": truth, "predictions": maps,
                      "dice": [metrics.dice_per_class(m, truth, CLASSES) for m in maps]}  # fmt: skip
    return [
        {"class": name, "value": value, "cases": [seen[f] for f in worst[name]]}
        for value, name in CLASSES.items()
    ]


def classification_scores(
    runner: Runner, model: str | ModelSpec, images: Path, rows: Sequence[LabelledImage], batch: int = 16,
    progress: bool = False,
) -> tuple[ModelSpec, np.ndarray]:  # fmt: skip
    """(spec, scores N x labels) of a classifier on the listed images."""
    spec = runner.registry.check(model)
    out = []
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    for chunk in _progress(chunks, len(chunks), f"eval {spec.ref}", progress):
        results = runner.classify_batch([read_gray(images / r.file) for r in chunk], spec)
        out.extend([[res.probabilities[label] for label in spec.labels] for res in results])
    return spec, np.asarray(out, np.float64)


def auc_table(
    rows: Sequence[LabelledImage],
    labels: Sequence[str],
    scores: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """{"per_finding": {label: auc_report}, "mean_auc": mean over findings with positives and negatives}."""
    per = {}
    for j, label in enumerate(labels):
        y = np.array([label in r.findings for r in rows])
        per[label] = metrics.auc_report(y, scores[:, j], n_boot=n_boot, seed=seed)
    aucs = [v["auc"] for v in per.values() if v["auc"] is not None]
    return {
        "mean_auc": float(np.mean(aucs)) if aucs else None,
        "n_findings_scored": len(aucs),
        "per_finding": per,
    }


def _hardest(rows: Sequence[LabelledImage], y: np.ndarray, score: np.ndarray, k: int) -> dict:
    """The k positives scored lowest and the k negatives scored highest: the images that cost the AUC most."""

    def case(i: int) -> dict:
        return {"file": rows[i].file, "score": float(score[i]), "findings": sorted(rows[i].findings)}

    order = np.argsort(score, kind="stable")
    return {"missed": [case(i) for i in order if y[i]][:k],
            "false_alarms": [case(i) for i in order[::-1] if not y[i]][:k]}  # fmt: skip


def evaluate_classification(
    runner: Runner,
    model: str | ModelSpec,
    images: Path,
    rows: Sequence[LabelledImage],
    n_boot: int = N_BOOT,
    seed: int = 0,
    progress: bool = False,
    against: str | ModelSpec | None = None,
    hardest: int = 0,
) -> dict:
    """AUC per finding (the model's labels except "No Finding"; softmax scores as they are for single-label
    models) on all listed images and on the multi-finding subset (images with two or more findings).
    `against`: another version on the same images, and the paired difference of the mean AUC over the
    findings both score (model minus it). `hardest`: per finding, that many of the lowest-scored positives
    ("missed") and highest-scored negatives ("false_alarms"), with their labelled findings."""
    spec, scores = classification_scores(runner, model, images, rows, progress=progress)
    findings = [label for label in spec.labels if label != "No Finding"]
    cols = [spec.labels.index(label) for label in findings]
    multi = [i for i, r in enumerate(rows) if len(r.findings) >= 2]
    all_table = auc_table(rows, findings, scores[:, cols], n_boot, seed)
    multi_table = auc_table([rows[i] for i in multi], findings, scores[multi][:, cols], n_boot, seed)
    for j, label in zip(cols, findings, strict=True):
        y = np.array([label in r.findings for r in rows])
        entry = all_table["per_finding"][label]
        if label in spec.thresholds:  # what the viewer's "positive" flag means on these images
            entry["at_threshold"] = metrics.operating_point(y, scores[:, j], spec.thresholds[label])
        if hardest > 0:
            entry["hardest"] = _hardest(rows, y, scores[:, j], hardest)
        if spec.activation == "sigmoid":  # probabilities: how well they match the observed rates
            entry |= {"brier": metrics.brier(y, scores[:, j]), "mean_score": float(scores[:, j].mean()),
                      "rate": float(y.mean())}  # fmt: skip
    if against is not None:
        other, other_scores = classification_scores(runner, against, images, rows, progress=progress)
        both = [label for label in findings if label in other.labels]
        y = np.array([[label in r.findings for label in both] for r in rows])
        a = scores[:, [spec.labels.index(label) for label in both]]
        b = other_scores[:, [other.labels.index(label) for label in both]]
        compared = {"model": other.provenance(), "findings": both, "model_minus_against": {
            "all": metrics.paired_bootstrap_mean_auc_diff(y, a, b, n_boot, seed),
            "multi_finding": metrics.paired_bootstrap_mean_auc_diff(y[multi], a[multi], b[multi], n_boot, seed),
        }}  # fmt: skip
    return {
        "task": "classification",
        "model": spec.provenance(),
        "score_kind": spec.score_kind,
        "n_images": len(rows),
        "n_patients": len({r.patient for r in rows}),
        "mean_auc": all_table["mean_auc"],
        "per_finding": all_table["per_finding"],
        "multi_finding": {"n_images": len(multi), **multi_table},
        **(
            {"mean_brier": float(np.mean([all_table["per_finding"][f]["brier"] for f in findings]))}
            if spec.activation == "sigmoid"
            else {}
        ),
        "bootstrap": {"resamples": n_boot, "seed": seed, "interval": "95% percentile"},
        **({"against": compared} if against is not None else {}),
    }


def _ctr_ratios(runner: Runner, spec: ModelSpec, images: Path, rows: Sequence[LabelledImage], progress: bool):
    """(ratios with 0 where none can be measured, how many those are, {file: anatomy problems})."""
    ratios, unmeasured, implausible = [], 0, {}
    for r in _progress(rows, len(rows), f"ctr {spec.ref}", progress):
        label_map = runner.segment_anatomy(read_gray(images / r.file), spec).label_map
        ctr = cardiothoracic_ratio(label_map)
        if problems := anatomy_problems(label_map, ctr):
            implausible[r.file] = problems
        unmeasured += ctr is None
        ratios.append(0.0 if ctr is None else ctr.ratio)
    return np.asarray(ratios), unmeasured, implausible


def evaluate_ctr(
    runner: Runner, model: str | ModelSpec, images: Path, rows: Sequence[LabelledImage],
    n_boot: int = N_BOOT, seed: int = 0, progress: bool = False, against: str | ModelSpec | None = None,
) -> dict:  # fmt: skip
    """AUC of the cardiothoracic ratio (from this anatomy model's label map) for the Cardiomegaly label.
    Images where no ratio can be measured get ratio 0 (counted, not dropped). `against`: another anatomy
    version on the same images, and the paired AUC difference (model minus it)."""
    spec = runner.registry.check(model)
    ratios, unmeasured, implausible = _ctr_ratios(runner, spec, images, rows, progress)
    y = np.array(["Cardiomegaly" in r.findings for r in rows])
    report = metrics.auc_report(y, ratios, n_boot=n_boot, seed=seed)
    # What the viewer reports: the ratio only where the outlines pass postprocess.anatomy_problems.
    shown = np.array([r.file not in implausible for r in rows])
    plausible = metrics.auc_report(y[shown], ratios[shown], n_boot=n_boot, seed=seed)
    above = ratios > 0.5
    compared = {}
    if against is not None:
        other = runner.registry.check(against)
        other_ratios = _ctr_ratios(runner, other, images, rows, progress)[0]
        other_auc = metrics.auc_report(y, other_ratios, n_boot=n_boot, seed=seed)
        paired = metrics.paired_bootstrap_mean_auc_diff(y[:, None], ratios[:, None], other_ratios[:, None],
                                                         n_boot, seed)  # fmt: skip
        compared = {"against": {"model": other.provenance(), "auc": other_auc["auc"], "ci95": other_auc["ci95"],
                                "model_minus_against": paired}}  # fmt: skip
    return {
        "task": "ctr",
        "model": spec.provenance(),
        "finding": "Cardiomegaly",
        "n_images": len(rows),
        "unmeasured": unmeasured,
        **report,
        # above 0.5, not at it: the viewer's and the report's cardiomegaly flag (operating_point uses >=)
        "at_ctr_0.5": {
            "sensitivity": float(above[y].mean()) if y.any() else None,
            "specificity": float((~above[~y]).mean()) if (~y).any() else None,
        },
        "plausible_only": {"n_images": int(shown.sum()), "n_pos": int(y[shown].sum()),
                           "auc": plausible["auc"], "ci95": plausible["ci95"]},
        "implausible": implausible,
        **compared,
        "ctr": {r.file: round(float(v), 4) for r, v in zip(rows, ratios, strict=True)},
    }  # fmt: skip


def bone_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(radiograph, soft-tissue) pairs: `authentic/` and `des/` (or `soft/`) files matched by name."""
    src = Path(folder) / "authentic"
    soft = next(
        (Path(folder) / d for d in ("des", "soft", "soft_tissue") if (Path(folder) / d).is_dir()), None
    )
    if not src.is_dir() or soft is None:
        raise DatasetError(f"{folder} needs authentic/ and des/ subfolders of matching images")
    return paired_files(src, soft, "a soft-tissue image")


def evaluate_bone(runner: Runner, model: str | ModelSpec, pairs: Sequence[tuple[Path, Path]]) -> dict:
    """MAE and SSIM (data range 1) of the soft-tissue output, and of the input radiograph as the baseline."""
    spec = runner.registry.check(model)
    rows = []
    for src, soft in pairs:
        x, target = read_gray(src), read_gray(soft)
        if target.shape != x.shape:
            target = cv2.resize(target, x.shape[::-1], interpolation=cv2.INTER_AREA)
        out = runner.suppress_bones(x, spec).soft_tissue
        rows.append({
            "file": src.name, "mae": metrics.mae(out, target), "ssim": metrics.ssim(out, target),
            "input_mae": metrics.mae(x, target), "input_ssim": metrics.ssim(x, target),
        })  # fmt: skip
    return {
        "task": "bone_suppression",
        "model": spec.provenance(),
        "n_pairs": len(rows),
        "mae": _summary([r["mae"] for r in rows]),
        "ssim": _summary([r["ssim"] for r in rows]),
        "baseline_unprocessed": {
            "mae": _summary([r["input_mae"] for r in rows]),
            "ssim": _summary([r["input_ssim"] for r in rows]),
        },
        "bootstrap": {"resamples": N_BOOT, "seed": 0, "interval": "95% percentile, pairs resampled"},
        "per_image": rows,
    }
