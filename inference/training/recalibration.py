"""A calibrated version of the shipped classifier: its network and weights unchanged, its scores made
probabilities and its operating points set by a stated rule.

Why: the shipped single-label model reports softmax shares over 15 classes, so a finding's "probability" is
its share of one unit, not the chance it is there, and its Youden thresholds go down to 5e-7. Here each
finding's log softmax share is the logit of a Platt fit of its own (slope and intercept per finding, on the
patients not held out), and the threshold is the highest calibrated score that flags at least `sensitivity` of
those patients' positives. The map is monotone per finding, so every AUC is the shipped model's.

The version written is a model.json of the multi-label family (logsoftmax head, zero biases) that names the
shipped weights (`"weights_of"`) instead of copying them: nothing from the shared models folder is
committed. With `test_fraction`, that share of the patients (the same ones distillation sets aside for the
same seed) is kept out of every fit and measured once at the end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inference import calibration
from inference.models import cxr14_mobilenetv3_multilabel as family
from inference.models.cxr15_mobilenetv3 import LABELS as SHIPPED_LABELS
from inference.runner import Runner
from inference.training import common
from inference.training.data import DatasetError, LabelledImage, read_gray
from inference.training.distillation import (
    cross_fitted_calibration,
    held_out,
    held_out_record,
    operating_meta,
    operating_points,
    platt_per_finding,
    reliability,
    split_inputs,
)
from inference.types import RESEARCH_USE, ModelSpec


@dataclass
class CalibrateConfig:
    images: Path
    labels: Path
    out: Path
    models_dir: Path | None = None
    of: str = "cxr15_mobilenetv3@1.0.0"  # the shipped version whose weights are kept
    teacher: Path | None = None  # CheXNet's probabilities: the anchor the held-out figures are set beside
    folds: int = 5  # patient folds for the cross-fitted reliability and sensitivity
    sensitivity: float = 0.9
    test_fraction: float = 0.0
    seed: int = 0
    threads: int | None = None
    model_id: str = family.FAMILY
    version: str | None = None
    limit: int | None = None


def shipped_spec(cfg: CalibrateConfig) -> tuple[ModelSpec, Runner]:
    registry = common.registry_with(cfg.models_dir, cfg.out)
    spec = registry.check(registry.resolve(cfg.of))
    if not spec.builtin or tuple(spec.labels) != SHIPPED_LABELS:
        raise DatasetError(f"--of {spec.ref}: only the shipped 15-class classifier can be calibrated this way")
    return spec, Runner(registry, "cpu")


@torch.inference_mode()
def finding_logits(runner: Runner, spec: ModelSpec, images: Path, rows: Sequence[LabelledImage]) -> np.ndarray:
    """(N, 14) log softmax shares of the 14 findings: the logits the written version's head gives."""
    model = runner.load(spec)
    keep = [SHIPPED_LABELS.index(label) for label in family.FINDINGS]
    out = []
    for i in range(0, len(rows), 16):
        x = runner.classifier_input([read_gray(images / r.file) for r in rows[i : i + 16]], spec)
        out.append(F.log_softmax(model(x).float(), dim=1)[:, keep].cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def calibrate(cfg: CalibrateConfig, argv: Sequence[str] | None = None) -> dict:
    run = common.start_run(cfg.seed, "cpu", cfg.threads)
    learn, _, test, test_teacher = split_inputs(cfg)
    spec, runner = shipped_spec(cfg)
    version, vdir, epoch_log = common.new_version_dir(cfg.out, cfg.model_id, cfg.version)

    logits = finding_logits(runner, spec, cfg.images, learn)
    y = np.array([[label in r.findings for label in family.FINDINGS] for r in learn], np.float64)
    patients, fold = common.patient_folds([r.patient for r in learn], cfg.folds, cfg.seed)
    slopes, intercepts = platt_per_finding(logits, y)
    probs = calibration.apply_platt(logits, slopes, intercepts).astype(np.float64)
    cross = cross_fitted_calibration(logits, y, fold).astype(np.float64)
    points = operating_points(y, probs, cross, fold, cfg.sensitivity)
    epoch_log({"final": True, "images": len(learn), "seconds": round(run.clock.s, 1)})

    rule = (f"sensitivity >= {cfg.sensitivity:g} per finding: the highest calibrated score that flags at least "
            f"{cfg.sensitivity:.0%} of the positives among {len(learn)} NIH images (the patients not held out)")  # fmt: skip
    data_sha = common.file_list_sha256([cfg.images / r.file for r in learn] + [cfg.labels])
    meta = common.base_meta(model_id=cfg.model_id, version=version, task="classification", family=family.FAMILY,
                            argv=argv, code=run.code)  # fmt: skip
    meta |= operating_meta(points, rule) | {
        "input_size": list(spec.input_size),
        "normalisation": spec.normalisation,
        "mean": spec.mean,
        "std": spec.std,
        "arch": {"backbone": f"{spec.ref}, unchanged", "head": "logsoftmax"},
        "weights_of": spec.ref,
        "weights_file": spec.weights_file,
        "weights_sha256": spec.weights_sha256,
        "intended_use": f"{RESEARCH_USE} The shipped classifier ({spec.ref}) with Platt-calibrated probabilities "
        "per finding and thresholds by a stated sensitivity rule; it ranks images exactly as the shipped model does.",
        "source": f"Calibrated by CXR Review on {len(learn)} NIH images; the network and weights are {spec.ref}'s "
        "as shipped, with its research-demo status.",
        "data": {
            "images": str(cfg.images),
            "labels": str(cfg.labels),
            "file_list_sha256": data_sha,
            "n_images": len(learn),
            "n_patients": len(patients),
            "positives": {k: int(v) for k, v in zip(family.FINDINGS, y.sum(0), strict=True)},
            "folds": f"{cfg.folds} folds of patients ('Patient ID'), dealt in the order of sha256(seed:patient), "
            f"seed {cfg.seed}: only for the cross-fitted figures; the calibration is fitted on all {len(learn)}",
        } | held_out_record(test, cfg.test_fraction, cfg.seed),
        "training": {
            "trained": "nothing: the shipped network is unchanged; only the calibration and thresholds are fitted",
            "init_from": spec.ref,
            "sensitivity": cfg.sensitivity,
            "test_fraction": cfg.test_fraction,
            "folds": cfg.folds,
            "seed": cfg.seed,
            "wall_seconds": round(run.clock.s, 1),
        },
        "calibration": {
            "method": "Platt scaling per finding: sigmoid(slope[finding] * log_softmax_share + intercept[finding]), "
            f"smoothed targets, fitted on the {len(learn)} images not held out",
            "slopes": {label: float(a) for label, a in zip(family.FINDINGS, slopes, strict=True)},
            "intercepts": {label: float(c) for label, c in zip(family.FINDINGS, intercepts, strict=True)},
        },
    }
    if cfg.teacher is not None:
        meta["data"] |= {"teacher": str(cfg.teacher),
                         "teacher_sha256": hashlib.sha256(Path(cfg.teacher).read_bytes()).hexdigest()}  # fmt: skip
    meta["validation"] = {
        "method": f"the {len(learn)} images the calibration was fitted on; 'cross-fitted': each of {cfg.folds} "
        "patient folds calibrated by a fit on the other folds",
        "reliability": {
            "how": "'before' = the shipped softmax share, 'after' = Platt per finding fitted on the other folds "
            "(cross-fitted, not on the images measured)",
            **reliability(y, np.exp(logits), cross),
        },
        "operating_points": points,
    }
    common.write_model_json(vdir, meta)  # no weights file: the registry runs the shipped one

    registry = common.registry_with(cfg.models_dir, cfg.out)
    written = Runner(registry, "cpu")
    ref = f"{cfg.model_id}@{version}"
    n = min(16, len(learn))
    res = written.classify_batch([read_gray(cfg.images / r.file) for r in learn[:n]], ref)
    got = np.array([[r.probabilities[label] for label in family.FINDINGS] for r in res])
    meta["validation"]["runner_check"] = {"n_images": n, "max_abs_difference": float(np.abs(got - probs[:n]).max())}
    if test:
        meta["validation"]["held_out"] = held_out(written, ref, test, test_teacher, cfg)
    meta["training"]["wall_seconds_with_evaluation"] = round(run.clock.s, 1)
    path = common.write_model_json(vdir, meta)
    return meta | {"model_json": str(path)}

