"""Measure every version of a task side by side on images none of them trained on, and write the evidence file
that picks the task's default version (inference/evidence.py).

Segmentation: lungs Dice against hand-drawn binary lung masks (the covid_followup films: no version trained on
them), and Dice per class against label maps restricted to a version's recorded validation files (JSRT: the
built-in model trained on most of them, so that set flatters it; it is kept as a second opinion, not the rule).
Classification: mean AUC over the images with two or more findings, on the validation files a trained version
recorded (split by patient). Time per image is measured apart, the versions alternating on the same images, so
that a busy machine slows each of them alike.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import os
import statistics
from pathlib import Path
from time import perf_counter

import numpy as np
import torch

from inference import curves, evidence, metrics
from inference.evaluation import CLASSES, auc_table, classification_scores
from inference.runner import Runner
from inference.training.common import code_version
from inference.training.common import progress as _progress
from inference.training.data import DatasetError, paired_files, read_gray, read_label_map, read_labels_csv
from inference.types import ModelSpec
from services import priors

log = logging.getLogger(__name__)

N_BOOT = 1000
MARGIN = evidence.NON_INFERIORITY_MARGIN
# Classifiers whose mean AUC is equal to the 3 decimals shown are ordered by their mean calibration error on
# all the images measured: a calibrated copy of the shipped model ranks images as it does, but its scores mean
# what they say.
TIE_BREAK = {"metric": "mean_ece_all", "decimals": 3}
TIMING_IMAGES = 5  # images timed, each TIMING_ROUNDS times per version
TIMING_ROUNDS = 3


def frontal_names(metadata_csv: Path) -> set[str]:
    """Stems of the frontal films of a metadata CSV with `file` and `view` columns (covid_followup style)."""
    with open(metadata_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"file", "view"} <= set(reader.fieldnames or ()):
            raise DatasetError(f"{metadata_csv} needs the columns file and view")
        return {Path(r["file"]).stem for r in reader if priors.view_kind(r["view"]) == "frontal"}


def recorded_val_files(runner: Runner, ref: str) -> set[str]:
    """The validation file names a trained version recorded in its model.json (DatasetError when none)."""
    spec = runner.registry.resolve(ref)
    files = (spec.metadata.get("data") or {}).get("val_files")
    if not files:
        raise DatasetError(f"{spec.ref} records no validation files (built-in models have none)")
    return set(files)


def trained_on(spec: ModelSpec, folder: Path, files: set[str]) -> int | None:
    """How many of `files` (names in `folder`) a trained version's model.json says it trained on: every file
    of its images folder that is not among its recorded validation files; 0 when it trained on another folder;
    None for a built-in version (its training data is not recorded here)."""
    if spec.builtin:
        return None
    data = spec.metadata.get("data") or {}
    if Path(str(data.get("images", ""))).parts[-2:] != Path(folder).parts[-2:]:
        return 0
    return len(files - set(data.get("val_files") or ()))


def tuned_on(spec: ModelSpec, folder: Path, files: set[str]) -> int:
    """How many of `files` a trained version chose something on (its epoch, calibration or thresholds): its
    recorded validation files, unless its model.json says they were held out ("val_use": "held_out")."""
    data = spec.metadata.get("data") or {}
    if spec.builtin or data.get("val_use") == "held_out":
        return 0
    if Path(str(data.get("images", ""))).parts[-2:] != Path(folder).parts[-2:]:
        return 0
    return len(files & set(data.get("val_files") or ()))


def _unseen(
    specs: list[ModelSpec], folder: Path, files: set[str], tuned: bool = False
) -> tuple[list[ModelSpec], dict[str, str]]:
    """(the versions that trained on none of the files, {ref: why left out} for the others): a version is never
    ranked on images it learnt from, nor (`tuned`) on images it chose its epoch, calibration or thresholds on."""
    keep, out = [], {}
    for s in specs:
        n = trained_on(s, folder, files)
        m = tuned_on(s, folder, files) if tuned else 0
        if n:
            out[s.ref] = f"trained on {n} of the {len(files)} images measured"
        elif m:
            out[s.ref] = f"chose its epoch, calibration or thresholds on {m} of the {len(files)} images measured"
        else:
            keep.append(s)
    if not keep:
        raise DatasetError(f"every version trained on some of these images: {out}")
    return keep, out


def _binary_lung_dice(runner: Runner, spec: ModelSpec, pairs, label: str) -> list[float]:
    out = []
    for img_path, mask_path in _progress(pairs, len(pairs), label, True):
        pred = runner.segment_anatomy(read_gray(img_path), spec).label_map == 1
        truth = read_gray(mask_path) > 0.5
        if pred.shape != truth.shape:
            raise DatasetError(f"{img_path.name}: image {pred.shape} and mask {truth.shape} differ")
        out.append(metrics.dice(pred.astype(np.uint8), truth.astype(np.uint8), 1))
    return out


def _label_map_dice(runner: Runner, spec: ModelSpec, pairs, label: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in CLASSES.values()}
    for img_path, mask_path in _progress(pairs, len(pairs), label, True):
        pred = runner.segment_anatomy(read_gray(img_path), spec).label_map
        for name, value in metrics.dice_per_class(pred, read_label_map(mask_path), CLASSES).items():
            out[name].append(value)
    return out


def _summary(values: list[float]) -> dict:
    lo, hi = metrics.bootstrap_mean_ci(values, N_BOOT, seed=0)
    return {"mean": float(np.mean(values)), "ci95": [lo, hi], "n": len(values)}


BUSY = 0.5  # load from other jobs, per CPU, above which the time ratios are called into doubt


def busy_machine(load: float, cpus: int, own_threads: int) -> str | None:
    """Why times measured at this 1-minute load average may not hold (None when the machine was quiet enough;
    the measurement's own threads count towards the load): the budget is a ratio of times, and other jobs on 2
    cores moved it from 1.5x to 2.1x for the same version in this project."""
    if load - min(own_threads, cpus) > BUSY * cpus:
        return (f"timed on a busy machine (1-minute load average {load:.1f} on {cpus} CPUs): the time ratios may be "
                "off by a factor of 2; measure again when nothing else runs")  # fmt: skip
    return None


def _ms_per_image(run_one, specs: list[ModelSpec], images: list) -> dict[str, float]:
    """Median ms per image of each version, the versions alternating image by image (one warm-up each)."""
    times: dict[str, list[float]] = {s.ref: [] for s in specs}
    for s in specs:
        run_one(images[0], s)
    for _ in range(TIMING_ROUNDS):
        for image in images:
            for s in specs:
                t0 = perf_counter()
                run_one(image, s)
                times[s.ref].append((perf_counter() - t0) * 1000)
    return {ref: round(statistics.median(v), 1) for ref, v in times.items()}


def _add_times(per_version: dict, ms: dict[str, float], specs: list[ModelSpec]) -> str:
    """Times relative to the built-in version (the viewer's budget was set with it in), else the fastest."""
    builtin = [s.ref for s in specs if s.builtin]
    reference = builtin[0] if builtin else min(ms, key=ms.get)
    for ref, v in ms.items():
        per_version[ref]["ms_per_image"] = v
        per_version[ref]["relative_time"] = round(v / ms[reference], 2)
    return reference


def _kept(d: dict) -> dict:
    return {k: d[k] for k in ("difference", "ci95", "share_of_resamples_a_ahead")}


def _paired(values: dict[str, list[float]], best: str | None) -> dict:
    """Each version minus the chosen one on the same images (mean difference, 95% paired bootstrap)."""
    if best is None or best not in values:
        return {}
    return {ref: metrics.paired_bootstrap_mean_diff(v, values[best], N_BOOT, 0)
            for ref, v in values.items() if ref != best}  # fmt: skip


def measure_segmentation(
    runner: Runner,
    specs: list[ModelSpec],
    lungs: tuple[Path, Path, Path | None],
    label_maps: tuple[Path, Path, str | None] | None,
    max_relative_time: float,
    command: str,
    limit: int | None = None,
    margin: float = MARGIN,
) -> dict:
    """The evidence of the segmentation versions: `lungs` = (images, binary masks, metadata CSV for frontal
    films or None), the rule's set (`limit`: at most that many of its films, a fixed sample by name); `label_maps` = (images, label maps, the version whose validation files to
    keep, or None for all)."""
    images, masks, metadata = lungs
    pairs = paired_files(images, masks, "a lung mask")
    if metadata is not None:
        keep = frontal_names(metadata)
        pairs = [p for p in pairs if p[0].stem in keep]
    if limit is not None and len(pairs) > limit:  # a fixed sample: the same files on every machine
        pairs = sorted(pairs, key=lambda p: hashlib.sha256(p[0].name.encode()).hexdigest())[:limit]
    if not pairs:
        raise DatasetError("no frontal image with a lung mask")
    specs, left_out = _unseen(specs, Path(images), {p[0].name for p in pairs})
    lung_set = f"{Path(images).parent.name}_lungs"
    sets = {lung_set: {"images": str(images), "masks": str(masks), "n": len(pairs), "sample": None if limit is None else f"at most {limit} by sha256 of the name",
                       "truth": "binary lung masks drawn by hand (white = lung, including the lung behind the "
                                "heart, which the JSRT/SCR outlines the models learnt from leave out: every "
                                "version scores lower here than on JSRT, alike)",
                       "trained_on_by": []}}  # fmt: skip
    lung_dice = {s.ref: _binary_lung_dice(runner, s, pairs, f"{s.ref} lungs") for s in specs}
    per_version = {s.ref: {"weights_sha256": s.weights_sha256, "test_time_views": len(s.test_time_views) or 1,
                           "metrics": {lung_set: {"lungs_dice": _summary(lung_dice[s.ref])}}}
                   for s in specs}  # fmt: skip
    if label_maps is not None:
        lm_images, lm_masks, val_of = label_maps
        lm_pairs = paired_files(lm_images, lm_masks)
        name = f"{Path(lm_images).parent.name}"
        if val_of:
            files = recorded_val_files(runner, val_of)
            lm_pairs = [p for p in lm_pairs if p[0].name in files]
            name += f"_val_of_{val_of}"
        sets[name] = {"images": str(lm_images), "masks": str(lm_masks), "n": len(lm_pairs),
                      "truth": "label maps (0 background, 1 lungs, 2 heart, 3 clavicles)",
                      "trained_on_by": ["built-in versions: most of these images (see models/README.md)"]}  # fmt: skip
        for s in specs:
            per_class = _label_map_dice(runner, s, lm_pairs, f"{s.ref} {name}")
            per_version[s.ref]["metrics"][name] = {f"{c}_dice": _summary(v) for c, v in per_class.items()}
    sample = [read_gray(p[0]) for p in pairs[:TIMING_IMAGES]]
    ms = _ms_per_image(lambda im, s: runner.segment_anatomy(im, s), specs, sample)
    reference = _add_times(per_version, ms, specs)
    for ref, v in per_version.items():  # paired on the same films: the non-inferiority check of the rule
        if ref != reference:
            v["vs_reference"] = _kept(metrics.paired_bootstrap_mean_diff(lung_dice[ref], lung_dice[reference], N_BOOT, 0))
    return _finish("segmentation", per_version, sets, lung_dice, {"set": lung_set, "metric": "lungs_dice",
                   "max_relative_time": max_relative_time, "time_reference": reference,
                   "non_inferiority_margin": margin}, command, left_out)  # fmt: skip


def measure_classification(
    runner: Runner, specs: list[ModelSpec], images: Path, labels_csv: Path, val_of: str, max_relative_time: float,
    command: str, margin: float = MARGIN,
) -> dict:  # fmt: skip
    """The evidence of classification versions on the validation files `val_of` recorded (by patient): mean
    AUC over the images with two or more findings (the rule) and over all of them, each with its bootstrap
    interval, and every version's paired difference from the chosen one (the same resampled images)."""
    rows = read_labels_csv(labels_csv, images)
    files = recorded_val_files(runner, val_of)
    rows = [r for r in rows if r.file in files]
    specs, left_out = _unseen(specs, Path(images), {r.file for r in rows}, tuned=True)
    name = f"{Path(images).parent.name}_val_of_{val_of}"
    findings = [f for f in specs[0].labels if f != "No Finding" and all(f in s.labels for s in specs)]
    y = np.array([[f in r.findings for f in findings] for r in rows])
    multi = np.array([len(r.findings) >= 2 for r in rows])
    scores, per_version = {}, {}
    for s in specs:
        spec, sc = classification_scores(runner, s, images, rows, progress=True)
        scores[s.ref] = sc[:, [spec.labels.index(f) for f in findings]]
        entry = {}
        for metric, mask in (("mean_auc_multi", multi), ("mean_auc_all", np.ones(len(rows), bool))):
            table = auc_table([r for r, m in zip(rows, mask, strict=True) if m], findings, scores[s.ref][mask], N_BOOT)
            lo, hi = metrics.bootstrap_mean_auc_ci(y[mask], scores[s.ref][mask], N_BOOT)
            entry[metric] = {"mean": table["mean_auc"], "ci95": [lo, hi], "n": int(mask.sum()),
                             "per_finding": {f: v["auc"] for f, v in table["per_finding"].items()}}  # fmt: skip
        ece = {f: curves.calibration_bins(y[:, j], scores[s.ref][:, j])["ece"] for j, f in enumerate(findings)}
        entry["mean_ece_all"] = {"mean": float(np.mean(list(ece.values()))), "n": len(rows), "per_finding": ece}
        per_version[s.ref] = {"weights_sha256": s.weights_sha256, "metrics": {name: entry}}
    sets = {name: {"images": str(images), "labels": str(labels_csv), "n": len(rows), "n_multi": int(multi.sum()),
                   "findings": findings,
                   "trained_on_by": ["none of the versions measured (those that trained or chose anything on them "
                                     "are left out); the built-in classifier may have seen single-label images among "
                                     "them (models/README.md), not those with two or more findings"]}}  # fmt: skip
    sample = [read_gray(images / r.file) for r in rows[:TIMING_IMAGES]]
    ms = _ms_per_image(lambda im, s: runner.classify_batch([im], s), specs, sample)
    reference = _add_times(per_version, ms, specs)

    def diff(a, b, mask):
        return _kept(metrics.paired_bootstrap_mean_auc_diff(y[mask], a[mask], b[mask], N_BOOT, 0))

    everything = np.ones(len(rows), bool)
    for ref, v in per_version.items():  # paired on the same images: the non-inferiority check of the rule
        if ref != reference:
            v["vs_reference"] = diff(scores[ref], scores[reference], multi) | {
                "mean_auc_all": diff(scores[ref], scores[reference], everything)}
    data = _finish("classification", per_version, sets, {}, {"set": name, "metric": "mean_auc_multi",
                   "max_relative_time": max_relative_time, "time_reference": reference,
                   "non_inferiority_margin": margin, "tie_break": TIE_BREAK}, command, left_out)  # fmt: skip
    best = data["chosen"]
    if best in scores:  # paired: each version minus the chosen one on the same resampled images
        # the rule's metric at the top level (as for segmentation), all images beside it
        data["paired_vs_chosen"] = {ref: diff(sc, scores[best], multi) | {"mean_auc_all": diff(sc, scores[best], everything)}
                                    for ref, sc in scores.items() if ref != best}  # fmt: skip
    return data


def _finish(task: str, per_version: dict, sets: dict, values: dict, rule: dict, command: str,
            left_out: dict[str, str]) -> dict:  # fmt: skip
    data = {
        "format": 1,
        "task": task,
        "rule": {**rule, "text": f"the highest mean {rule['metric']} on {rule['set']} among the versions that take "
                                 f"at most {rule['max_relative_time']:g}x the time per image of {rule['time_reference']} "
                                 f"measured in the same run and are not worse than it by more than {rule['non_inferiority_margin']:g} "
                                 "(lower bound of the paired 95% interval)"
                                 + (f"; means equal to {rule['tie_break']['decimals']} decimals are ordered by the lower {rule['tie_break']['metric']}"
                                    if rule.get("tie_break") else "")
                                 + "; a measurement counts while the version keeps the weights it was measured with"},
        "sets": sets,
        "versions": per_version,
        "left_out": left_out,
        "measured": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "code_version": code_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    if why := busy_machine(data["load_average"], data["cpus"] or 1, data["torch_threads"]):
        data["timing_warning"] = why
        log.warning("evidence: %s", why)
    evidence.check(data)
    best = evidence.chosen(data, {ref: v["weights_sha256"] for ref, v in per_version.items()})
    data["chosen"] = best
    data["paired_vs_chosen"] = _paired(values, best)
    return data


def write(data: dict, root: Path) -> Path:
    path = evidence.path_for(root, data["task"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path
