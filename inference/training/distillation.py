"""Knowledge distillation of the multi-label findings classifier from a stronger model's probabilities
(`cxr-review train classification --teacher CSV`), cross-validated by patient, calibrated per finding on the
out-of-fold predictions, with operating points chosen by a stated sensitivity rule.

Student: the backbone of the shipped MobileNetV3-Small (cxr15_mobilenetv3, or of a version of this family),
frozen, with one linear layer on its pooled 576-d Grad-CAM features (the family's "pooled_linear" head). The
features are computed once per image and view (the image itself and `views` augmented copies), so a fit is a
ridge-penalised logistic regression costing seconds on a CPU. Measured out of fold on the 435 NIH images, this
did a little better on the multi-finding images than refitting the shipped head's last layer (0.63), and
training the head's hidden layer as well cost minutes per fold on the shared 2-core CPU; see README.

Loss: (1 - A) * BCE(labels) + A * BCE(teacher probabilities), A = --teacher-weight; BCE is linear in its target,
so this is one BCE against the soft target (1 - A) * y + A * t. Each fold's model learns from the labels and
teacher values of its training patients only: an out-of-fold image is scored by a model that saw neither.

Calibration: Platt scaling per finding (its own slope and intercept) fitted on the pooled out-of-fold logits.
Its reliability is measured cross-fitted (for each fold, fitted on the other folds' predictions), so the "after"
figures are not measured on the data they were fitted on. Thresholds: per finding, the highest calibrated score
that flags at least `sensitivity` of the out-of-fold positives; its sensitivity is measured cross-fitted too.
The version written is the same recipe trained on every image, with that calibration and those thresholds.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference import calibration, curves, evaluation, metrics
from inference.models import cxr14_mobilenetv3_multilabel as family
from inference.runner import Runner
from inference.training import common
from inference.training.data import Augment, ClassificationData, DatasetError, LabelledImage, read_labels_csv
from inference.types import RESEARCH_USE

log = logging.getLogger("cxr_review.training")

MEAN, STD = 0.485, 0.229  # the shipped classifier's normalisation (the frozen backbone knows no other)
HEAD = "pooled_linear"  # the family head the student has
BACKBONE = ("conv1", "bneck", "conv2")  # the MobileNetV3Small modules the student keeps (frozen)
FLAT = 1e-6  # the slope of a finding calibrated to a constant (the registry needs slopes > 0)


@dataclass
class DistillConfig:
    images: Path
    labels: Path
    teacher: Path
    out: Path
    models_dir: Path | None = None
    init: str = "cxr15_mobilenetv3"
    teacher_weight: float = 0.8
    folds: int = 5
    views: int = 4  # augmented copies per image besides the image itself
    l2: float = 0.03  # ridge penalty on the linear layer's weights (standardised features)
    iterations: int = 300  # L-BFGS
    sensitivity: float = 0.9
    seed: int = 0
    threads: int | None = None
    model_id: str = family.FAMILY
    version: str | None = None
    limit: int | None = None
    cache: Path | None = None  # keep the backbone features here between runs
    against: str | None = None  # also compare out of fold with this version on its recorded validation images
    test_fraction: float = 0.0  # patients held out before anything (recorded as val_files, measured at the end)
    progress: bool = True
    augment: Augment = field(
        default_factory=lambda: Augment(
            rotate_deg=7, scale=0.08, shift=0.05, brightness=0.08, contrast=0.15, gamma=0.2
        )
    )


def read_teacher(path: Path, files: Sequence[str], labels: Sequence[str] = family.FINDINGS) -> np.ndarray:
    """The teacher's probabilities (len(files) x len(labels)) from a CSV with "Image Index" and one column per
    label. Refused with the reason (DatasetError) when it does not match: a column missing or unknown, a name
    twice or not among `files`, an image of `files` without a row, a value that is not a number in [0, 1]."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read teacher file {path}: {exc}") from exc
    if "Image Index" not in columns:
        raise DatasetError(f"teacher file {path} needs an 'Image Index' column")
    missing = [label for label in labels if label not in columns]
    unknown = [c for c in columns if c != "Image Index" and c not in labels]
    if missing or unknown:
        raise DatasetError(
            f"teacher file {path} must have one column per finding: "
            + "; ".join(s for s in (missing and f"missing {missing}", unknown and f"unknown {unknown}") if s)
        )
    by_name: dict[str, list[float]] = {}
    for line, r in enumerate(rows, start=2):
        name = (r.get("Image Index") or "").strip()
        if name in by_name:
            raise DatasetError(f"teacher file {path} line {line}: {name!r} appears twice")
        values = []
        for label in labels:
            text = r.get(label)
            try:
                v = float(text)
            except (TypeError, ValueError):
                raise DatasetError(
                    f"teacher file {path} line {line}: {label} = {text!r} is not a number"
                ) from None
            if not 0.0 <= v <= 1.0:  # NaN fails this too
                raise DatasetError(f"teacher file {path} line {line}: {label} = {text} is outside [0, 1]")
            values.append(v)
        by_name[name] = values
    known = set(files)
    if strangers := sorted(n for n in by_name if n not in known):
        raise DatasetError(
            f"teacher file {path} names {len(strangers)} image(s) that are not among the labelled images, "
            f"e.g. {strangers[:3]}"
        )
    if absent := [n for n in files if n not in by_name]:
        raise DatasetError(
            f"teacher file {path} has no row for {len(absent)} labelled image(s), e.g. {absent[:3]}"
        )
    return np.array([by_name[n] for n in files], np.float32)


def student(cfg: DistillConfig) -> tuple[nn.Module, nn.Module, str, str]:
    """(the student network, its start as a whole classifier (the reference 'start'), where it starts from, the
    start's weights sha256). A start that is not a classifier of the 14 findings (or the shipped 15-class one)
    is refused before its weights are even read."""
    registry = common.registry_with(cfg.models_dir, cfg.out)
    spec = registry.resolve(cfg.init)
    if spec.task != "classification":
        raise DatasetError(f"--init {spec.ref} is a {spec.task} model, not a findings classifier")
    shipped = spec.builtin and spec.model_id == "cxr15_mobilenetv3"
    if not shipped and not (spec.family == family.FAMILY and tuple(spec.labels) == family.FINDINGS):
        raise DatasetError(
            f"--init {spec.ref} has the labels {list(spec.labels)}; the student needs the 14 NIH findings "
            f"{list(family.FINDINGS)} (a {family.FAMILY} version) or the shipped cxr15_mobilenetv3"
        )
    spec, state = common.resolve_init(spec.ref, cfg.models_dir, cfg.out)
    if shipped:
        start = family.from_single_label(state, "linear")
    else:
        start = family.build(spec)
        start.load_state_dict(state)
    backbone = {k.removeprefix("base."): v for k, v in state.items()}
    model = family.make(len(family.FINDINGS), HEAD)
    model.base.load_state_dict(
        {k: v for k, v in backbone.items() if k.split(".")[0] in BACKBONE}, strict=True
    )
    nn.init.zeros_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
    common.rounded_fp16(model)  # features from the weights as they will be written
    return model.eval(), start.eval(), f"{spec.ref} (sha256 {spec.weights_sha256})", spec.weights_sha256


def backbone_features(
    model: nn.Module,
    data: ClassificationData,
    views: int,
    seed: int,
    augment: Augment,
    progress: bool = False,
) -> np.ndarray:
    """(views + 1, N, 576) pooled features of the frozen backbone: view 0 is the image as the runner sees it,
    the others augmented copies (fixed by `seed`)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((views + 1, len(data), 576), np.float32)
    chunks = [list(range(i, min(i + 32, len(data)))) for i in range(0, len(data), 32)]
    steps = [(v, idx) for v in range(views + 1) for idx in chunks]
    model.eval()
    with torch.inference_mode():
        for v, idx in common.progress(steps, len(steps), "backbone features", progress):
            x, _ = data.batch(idx, rng if v else None, augment if v else None)
            out[v, idx] = model.features((x - MEAN) / STD).mean((2, 3)).numpy()
    return out


def cached_features(cfg: DistillConfig, model, data: ClassificationData, key: str) -> np.ndarray:
    """backbone_features, kept in `cfg.cache` (an .npz) under `key` (init weights, images, views, seed)."""
    if cfg.cache and Path(cfg.cache).is_file():
        with np.load(cfg.cache) as z:
            if str(z["key"]) == key:
                return z["features"]
    feats = backbone_features(model, data, cfg.views, cfg.seed, cfg.augment, cfg.progress)
    if cfg.cache:
        Path(cfg.cache).parent.mkdir(parents=True, exist_ok=True)
        np.savez(cfg.cache, key=np.array(key), features=feats)
    return feats


def start_logits(start: nn.Module, feats: np.ndarray) -> np.ndarray:
    """The starting classifier's finding logits from pooled features (its head pools a 1x1 map: a no-op)."""
    with torch.inference_mode():
        return start.head(torch.from_numpy(feats)[:, :, None, None]).double().numpy()


def soft_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """(1 - A) * labels + A * teacher: BCE against it equals (1 - A) BCE(labels) + A BCE(teacher)."""
    return ((1.0 - weight) * labels + weight * teacher).astype(np.float32)


@dataclass(frozen=True)
class LinearHead:
    """logits = feats @ weight.T + bias (weight K x 576), as the student's `fc` computes them."""

    weight: np.ndarray
    bias: np.ndarray

    def logits(self, feats: np.ndarray) -> np.ndarray:
        return feats.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias

    def into(self, model: nn.Module) -> None:
        with torch.no_grad():
            model.fc.weight.copy_(torch.from_numpy(self.weight))
            model.fc.bias.copy_(torch.from_numpy(self.bias))


def train_head(feats: np.ndarray, targets: np.ndarray, cfg: DistillConfig) -> tuple[LinearHead, list[float]]:
    """A linear layer fitted to `targets` (n x K soft targets) on `feats` (V x n x 576, every view a sample):
    features standardised (mean and sd of these samples, folded into the weights afterwards), full-batch
    L-BFGS from zero on the mean BCE + l2/2 |W|^2. Deterministic. Returns the layer and the loss at each
    evaluation (the first is the all-zero start's, log 2)."""
    v, n, d = feats.shape
    x = feats.reshape(v * n, d).astype(np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    y = torch.from_numpy(np.tile(targets, (v, 1)).astype(np.float32))
    w = torch.zeros(targets.shape[1], d, requires_grad=True)
    b = torch.zeros(targets.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=cfg.iterations, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)  # fmt: skip
    losses: list[float] = []

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(x @ w.T + b, y) + 0.5 * cfg.l2 * (w**2).sum()
        loss.backward()
        losses.append(loss.item())
        return loss

    opt.step(closure)
    ws = w.detach().double().numpy() / sd  # back to raw features
    return LinearHead(
        ws.astype(np.float32), (b.detach().double().numpy() - ws @ mu).astype(np.float32)
    ), losses


def _aucs(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    return {
        label: metrics.roc_auc(y[:, j], s[:, j])
        for j, label in enumerate(family.FINDINGS)
        if y[:, j].any() and not y[:, j].all()
    }


def _mean(d: dict[str, float]) -> float:
    return float(np.mean(list(d.values()))) if d else float("nan")


def _within_folds(y: np.ndarray, s: np.ndarray, fold: np.ndarray) -> float:
    """AUC inside each fold (one model's scores), averaged over findings, then over folds."""
    return float(np.mean([_mean(_aucs(y[fold == k], s[fold == k])) for k in np.unique(fold)]))


def compare(
    y: np.ndarray, scores: dict[str, np.ndarray], fold: np.ndarray, multi: np.ndarray, seed: int
) -> dict:
    """Per finding and mean AUC of each score set on all images and on those with two or more findings, and the
    paired bootstrap difference student minus teacher (pooled out-of-fold scores)."""
    out = {}
    for name, mask in (("all", np.ones(len(y), bool)), ("multi_finding", multi)):
        yy = y[mask]
        per = {k: _aucs(yy, s[mask]) for k, s in scores.items()}
        diff = metrics.paired_bootstrap_mean_auc_diff(
            yy, scores["student"][mask], scores["teacher"][mask], seed=seed
        )
        out[name] = {
            "n_images": int(mask.sum()),
            "mean_auc": {k: _mean(v) for k, v in per.items()},
            "student_within_folds": _within_folds(yy, scores["student"][mask], fold[mask]),
            "student_minus_teacher": {k: diff[k] for k in ("difference", "ci95", "share_of_resamples_a_ahead")},
            "per_finding": {
                label: {k: round(v[label], 4) for k, v in per.items()} | {"n_pos": int(yy[:, j].sum())}
                for j, label in enumerate(family.FINDINGS) if label in per["student"]
            },
        }  # fmt: skip
    return out


def reliability_of(y: np.ndarray, before: np.ndarray, after: np.ndarray) -> list[dict[str, float]]:
    """Per column: ECE (10 equal-width bins) and Brier score, before and after calibration."""
    return [
        {
            "ece_before": curves.calibration_bins(y[:, j], before[:, j])["ece"],
            "ece_after": curves.calibration_bins(y[:, j], after[:, j])["ece"],
            "brier_before": metrics.brier(y[:, j], before[:, j]),
            "brier_after": metrics.brier(y[:, j], after[:, j]),
        }
        for j in range(y.shape[1])
    ]


def reliability(y: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict:
    """reliability_of per finding, and the means over findings."""
    per = dict(zip(family.FINDINGS, reliability_of(y, before, after), strict=True))
    means = {k: float(np.mean([p[k] for p in per.values()])) for k in next(iter(per.values()))}
    return {"mean": means, "per_finding": {k: {m: round(v, 5) for m, v in p.items()} for k, p in per.items()}}


def platt_per_finding(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """calibration.fit_platt_per_label, except that a finding whose held-out scores rank against its labels
    (slope <= 0) gets a flat probability, its smoothed rate: the model knows nothing useful about it."""
    slopes, intercepts = calibration.fit_platt_per_label(logits, y)
    for k in np.flatnonzero(~(slopes > 0)):
        rate = (y[:, k].sum() + 1) / (len(y) + 2)
        slopes[k], intercepts[k] = FLAT, math.log(rate / (1 - rate)) - FLAT * float(np.mean(logits[:, k]))
    return slopes, intercepts


def cross_fitted_calibration(logits: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Calibrated probabilities where each fold's come from a Platt fit on the other folds' predictions."""
    out = np.zeros_like(logits)
    for k in np.unique(fold):
        slopes, intercepts = platt_per_finding(logits[fold != k], y[fold != k])
        out[fold == k] = calibration.apply_platt(logits[fold == k], slopes, intercepts)
    return out


def operating_points(
    y: np.ndarray, probs: np.ndarray, cross: np.ndarray, fold: np.ndarray, target: float
) -> dict:
    """Per finding: the threshold of the sensitivity rule on all out-of-fold probabilities, its sensitivity and
    specificity there, and the sensitivity when each fold's threshold is chosen on the other folds (`cross`:
    cross-fitted probabilities), which is what a new image can expect."""
    out = {}
    for j, label in enumerate(family.FINDINGS):
        yj = y[:, j] > 0
        if not yj.any():  # nothing to be sensitive to: never flagged below certainty
            out[label] = {"threshold": 1.0, "n_pos": 0, "note": "no positives: the rule cannot apply"}
            continue
        thr = metrics.threshold_at_sensitivity(yj, probs[:, j], target)
        point = metrics.operating_point(yj, probs[:, j], thr)
        called = np.zeros(len(yj), bool)
        for k in np.unique(fold):
            held, rest = fold == k, fold != k
            if yj[rest].any():  # else nothing is called in this fold
                t = metrics.threshold_at_sensitivity(yj[rest], cross[rest, j], target)
                called[held] = cross[held, j] >= t
        out[label] = {
            "threshold": thr, "sensitivity": point["sensitivity"], "specificity": point["specificity"],
            "n_pos": int(yj.sum()),
            "sensitivity_cross_fitted": float(called[yj].mean()),
            "specificity_cross_fitted": float((~called[~yj]).mean()) if (~yj).any() else None,
        }  # fmt: skip
    return out


def _against(cfg: DistillConfig, rows: Sequence[LabelledImage], y, student_probs, multi) -> dict | None:
    """The student (out of fold) against another version on that version's recorded validation images."""
    if not cfg.against:
        return None
    registry = common.registry_with(cfg.models_dir, cfg.out)
    spec = registry.check(registry.resolve(cfg.against))
    val = set((spec.metadata.get("data") or {}).get("val_files") or [])
    if not val:
        raise DatasetError(f"--against {spec.ref} records no validation files")
    keep = np.array([r.file in val for r in rows])
    spec, scores = evaluation.classification_scores(Runner(registry, "cpu"), spec, cfg.images,
                                                    [r for r, k in zip(rows, keep, strict=True) if k])  # fmt: skip
    other = scores[:, [spec.labels.index(label) for label in family.FINDINGS]]
    out = {"version": spec.ref, "images": f"its {int(keep.sum())} recorded validation images"}
    for name, mask in (("all", np.ones(int(keep.sum()), bool)), ("multi_finding", multi[keep])):
        d = metrics.paired_bootstrap_mean_auc_diff(
            y[keep][mask], student_probs[keep][mask], other[mask], seed=cfg.seed
        )
        out[name] = {"n_images": int(mask.sum()), "student": d["a"], "against": d["b"],
                     "student_minus_against": {k: d[k] for k in ("difference", "ci95", "share_of_resamples_a_ahead")}}  # fmt: skip
    return out


def held_out(runner: Runner, ref: str, rows: Sequence[LabelledImage], teacher: np.ndarray | None, cfg) -> dict:
    """The written version against its teacher (when there is one) on the held-out patients (measured once,
    after every choice), on all of them and on those with two or more findings; the version's thresholds'
    sensitivity there. `cfg`: anything with `images` and `seed`."""
    spec, scores = evaluation.classification_scores(runner, ref, cfg.images, rows)
    s = scores[:, [spec.labels.index(x) for x in family.FINDINGS]]
    y = np.array([[label in r.findings for label in family.FINDINGS] for r in rows])
    multi = np.array([len(r.findings) >= 2 for r in rows])
    out: dict = {"method": "the written version run as the app runs it on the held-out patients"
                           + ("; 'teacher' is CheXNet's probability on the same images" if teacher is not None else ""),
                 "n_images": len(rows)}  # fmt: skip
    for name, mask in (("all", np.ones(len(rows), bool)), ("multi_finding", multi)):
        if teacher is None:
            out[name] = {"n_images": int(mask.sum()), "student": _mean(_aucs(y[mask], s[mask]))}
            continue
        d = metrics.paired_bootstrap_mean_auc_diff(y[mask], s[mask], teacher[mask], seed=cfg.seed)
        out[name] = {"n_images": int(mask.sum()), "student": d["a"], "teacher": d["b"],
                     "student_minus_teacher": {k: d[k] for k in ("difference", "ci95", "share_of_resamples_a_ahead")}}  # fmt: skip
    out["at_thresholds"] = {
        label: metrics.operating_point(y[:, j], s[:, j], spec.thresholds[label]) | {"n_pos": int(y[:, j].sum())}
        for j, label in enumerate(family.FINDINGS) if y[:, j].any()
    }  # fmt: skip
    per = reliability_of(y.astype(np.float64), s, s)  # the calibrated probabilities as written: "after"
    out["reliability_mean"] = {k: float(np.mean([p[f"{k}_after"] for p in per])) for k in ("ece", "brier")}
    return out


def held_out_mask(rows: Sequence[LabelledImage], fraction: float, seed: int) -> np.ndarray:
    """Which rows are the held-out test patients: `fraction` of the patients in their own order (seeded
    "test:<seed>", apart from the folds'), the same ones for every recipe given the same rows and seed."""
    if fraction <= 0:
        return np.zeros(len(rows), bool)
    _, test_files = common.split_by_group([r.file for r in rows], [r.patient for r in rows], fraction, f"test:{seed}")
    return np.isin([r.file for r in rows], test_files)


def held_out_record(rows: Sequence[LabelledImage], fraction: float, seed: int) -> dict:
    """model.json "data" fields of the held-out patients: what `cxr-review evidence classification --val-of`
    measures on ({} when none were held out)."""
    if not rows:
        return {}
    return {
        "n_held_out": len(rows),
        "held_out": f"{fraction:g} of the patients, ordered by sha256('test:{seed}:' + patient), set aside before "
        "anything else: no fold, calibration or threshold saw them",
        "val_files": sorted(r.file for r in rows),
        "val_use": "held_out",
    }


def operating_meta(points: dict, rule: str) -> dict:
    """model.json fields of a calibrated 14-finding version: its labels, sigmoid scores and thresholds by `rule`."""
    return {
        "labels": list(family.FINDINGS),
        "activation": "sigmoid",
        "thresholds": {label: points[label]["threshold"] for label in family.FINDINGS},
        "thresholds_rule": rule,
    }


def check_inputs(cfg: DistillConfig) -> tuple[list[LabelledImage], np.ndarray, list[LabelledImage], np.ndarray]:
    """(the rows to learn from, the teacher's matrix for them, the held-out rows, the teacher's matrix for those);
    everything refusable is refused here. With `test_fraction`, that share of the patients is set aside first:
    no fold, no calibration and no threshold sees them, so the version can be measured on them afterwards."""
    if not 0.0 <= cfg.teacher_weight <= 1.0:
        raise DatasetError(f"--teacher-weight must be in [0, 1], not {cfg.teacher_weight}")
    return split_inputs(cfg)


def split_inputs(cfg) -> tuple[list[LabelledImage], np.ndarray | None, list[LabelledImage], np.ndarray | None]:
    """What every recipe with a sensitivity rule checks and reads (`cfg`: labels, images, teacher or None, limit,
    folds, sensitivity, test_fraction, seed): the rows to learn from and the held-out ones, each with the
    teacher's matrix (None without a teacher). The teacher file is matched against every labelled image, then
    cut to `limit` with them."""
    if cfg.folds < 2:
        raise DatasetError("--folds needs at least 2")
    if not 0 < cfg.sensitivity <= 1:
        raise DatasetError(f"--sensitivity must be in (0, 1], not {cfg.sensitivity}")
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise DatasetError(f"--test-fraction must be in [0, 1), not {cfg.test_fraction}")
    rows = read_labels_csv(cfg.labels, cfg.images)
    teacher = read_teacher(cfg.teacher, [r.file for r in rows])[: cfg.limit] if cfg.teacher else None
    rows = rows[: cfg.limit]
    held = held_out_mask(rows, cfg.test_fraction, cfg.seed)
    learn = [r for r, h in zip(rows, held, strict=True) if not h]
    if len({r.patient for r in learn}) < cfg.folds:
        raise DatasetError(
            f"{len(learn)} images of fewer than {cfg.folds} patients cannot make {cfg.folds} folds"
        )
    test = [r for r, h in zip(rows, held, strict=True) if h]
    return learn, None if teacher is None else teacher[~held], test, None if teacher is None else teacher[held]


def distil(cfg: DistillConfig, argv: Sequence[str] | None = None) -> dict:
    run = common.start_run(cfg.seed, "cpu", cfg.threads)
    rows, teacher, test_rows, test_teacher = check_inputs(cfg)
    model, start_model, init_from, init_sha = student(cfg)
    version, vdir, epoch_log = common.new_version_dir(cfg.out, cfg.model_id, cfg.version)
    files = [r.file for r in rows]
    data = ClassificationData(cfg.images, rows, family.FINDINGS, (224, 224))
    y = data.targets.astype(np.float64)
    data_sha = common.file_list_sha256([cfg.images / f for f in files] + [cfg.labels])
    key = hashlib.sha256(
        f"{init_sha}|{data_sha}|{cfg.views}|{cfg.seed}|{asdict(cfg.augment)}".encode()
    ).hexdigest()
    t0 = common.Stopwatch()
    feats = cached_features(cfg, model, data, key)
    feature_seconds = t0.s

    patients, fold = common.patient_folds([r.patient for r in rows], cfg.folds, cfg.seed)
    targets = soft_targets(data.targets, teacher, cfg.teacher_weight)
    oof = np.zeros_like(y)
    start = start_logits(start_model, feats[0])
    fold_runs = []
    for k in range(cfg.folds):
        tr = fold != k
        head, losses = train_head(feats[:, tr], targets[tr], cfg)
        oof[~tr] = head.logits(feats[0, ~tr])
        fold_runs.append({"fold": k + 1, "n_train": int(tr.sum()), "n_held_out": int((~tr).sum()),
                          "loss_start": losses[0], "loss_end": losses[-1], "evaluations": len(losses)})  # fmt: skip
        epoch_log({"fold": k + 1, "loss_first": losses[0], "loss_last": losses[-1],
                   "held_out_mean_auc": _mean(_aucs(y[~tr], oof[~tr]))})  # fmt: skip
    multi = np.array([len(r.findings) >= 2 for r in rows])
    raw = calibration.sigmoid(oof)
    evidence = compare(
        y, {"student": oof, "teacher": teacher.astype(np.float64), "start": start}, fold, multi, cfg.seed
    )

    slopes, intercepts = platt_per_finding(oof, y)
    probs = calibration.apply_platt(oof, slopes, intercepts).astype(np.float64)
    cross = cross_fitted_calibration(oof, y, fold).astype(np.float64)
    points = operating_points(y, probs, cross, fold, cfg.sensitivity)

    head, losses = train_head(feats, targets, cfg)
    head.into(model)
    common.rounded_fp16(model)
    final = calibration.apply_platt(
        LinearHead(model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()).logits(feats[0]),
        slopes,
        intercepts,
    )
    epoch_log({"final": True, "loss_first": losses[0], "loss_last": losses[-1]})
    train_seconds = run.clock.s

    rule = (f"sensitivity >= {cfg.sensitivity:g} per finding: the highest calibrated score that flags at least "
            f"{cfg.sensitivity:.0%} of the positives among the out-of-fold predictions ({cfg.folds} patient folds "
            f"of {len(rows)} NIH images)")  # fmt: skip
    meta = common.base_meta(model_id=cfg.model_id, version=version, task="classification", family=family.FAMILY,
                            argv=argv, code=run.code)  # fmt: skip
    meta |= operating_meta(points, rule) | {
        "input_size": [224, 224],
        "normalisation": f"grayscale, antialiased bilinear resize to 224x224, (x - {MEAN}) / {STD}",
        "mean": MEAN,
        "std": STD,
        "arch": {"backbone": "MobileNetV3-Small (cxr15_mobilenetv3 layout), frozen", "head": HEAD},
        "intended_use": f"{RESEARCH_USE} Multi-label triage demo distilled from CheXNet's probabilities on "
        f"{len(rows)} NIH images; see validation for how it compares with its teacher.",
        "source": f"Distilled by CXR Review: backbone of {init_from} kept frozen, head trained on the labels and "
        f"the teacher probabilities in {cfg.teacher.name}. Inherits the research-demo status of the shipped weights.",
        "data": {
            "images": str(cfg.images),
            "labels": str(cfg.labels),
            "teacher": str(cfg.teacher),
            "teacher_sha256": hashlib.sha256(Path(cfg.teacher).read_bytes()).hexdigest(),
            "file_list_sha256": data_sha,
            "n_images": len(rows),
            "n_patients": len(patients),
            "n_multi_finding": int(multi.sum()),
            "folds": f"{cfg.folds} folds of patients ('Patient ID'), dealt in the order of sha256(seed:patient), "
            f"seed {cfg.seed}",
            "positives": {k: int(v) for k, v in zip(family.FINDINGS, y.sum(0), strict=True)},
        } | held_out_record(test_rows, cfg.test_fraction, cfg.seed),
        "training": {
            **{
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(cfg).items()
                if k
                not in (
                    "images",
                    "labels",
                    "teacher",
                    "out",
                    "models_dir",
                    "augment",
                    "cache",
                    "model_id",
                    "version",
                    "progress",
                )
            },
            "augment": asdict(cfg.augment),
            "init_from": init_from,
            "loss": f"(1 - {cfg.teacher_weight:g}) * BCE(labels) + {cfg.teacher_weight:g} * BCE(teacher "
            f"probabilities) + {cfg.l2:g}/2 |W|^2 (standardised features), every view of every image a sample; L-BFGS to "
            "convergence, no early stopping",
            "trained": "fc only (full-batch L-BFGS on standardised features); backbone frozen",
            "fold_runs": fold_runs,
            "final_loss_start": losses[0],
            "final_loss_end": losses[-1],
            "feature_seconds": round(feature_seconds, 1),
            "wall_seconds": round(train_seconds, 1),
        },  # fmt: skip
        "calibration": {
            "method": "Platt scaling per finding: sigmoid(slope[finding] * logit + intercept[finding]), smoothed "
            "targets, fitted on the pooled out-of-fold logits of the fold models",
            "slopes": {label: float(a) for label, a in zip(family.FINDINGS, slopes, strict=True)},
            "intercepts": {label: float(c) for label, c in zip(family.FINDINGS, intercepts, strict=True)},
        },
        "validation": {
            "method": f"out of fold: {cfg.folds} patient folds; every image scored by a fold model that saw neither "
            "its labels nor its teacher values. 'teacher' is CheXNet's own probability on the same image, 'start' "
            f"the untrained head of {init_from}",
            "cross_validation": evidence,
            "reliability": {
                "how": "out of fold; 'before' = sigmoid of the raw logits, 'after' = Platt per finding fitted on "
                "the other folds' predictions (cross-fitted, not on the images measured)",
                **reliability(y, raw, cross),
            },
            "operating_points": points,
            "against": _against(cfg, rows, y, oof, multi),
        },
    }

    def check(runner: Runner, ref: str) -> dict:  # the written fp16 version, run as the app runs it
        n = min(16, len(rows))
        spec, scores = evaluation.classification_scores(runner, ref, cfg.images, rows[:n])
        diff = float(np.abs(scores[:, [spec.labels.index(x) for x in family.FINDINGS]] - final[:n]).max())
        out = meta["validation"] | {"runner_check": {"n_images": n, "max_abs_difference": diff}}
        if test_rows:
            out["held_out"] = held_out(runner, ref, test_rows, test_teacher, cfg)
        return out

    return common.publish(vdir, model, meta, out=cfg.out, device="cpu", clock=run.clock, evaluate=check,
                          keep_checkpoint=False, history=epoch_log.history)  # fmt: skip
