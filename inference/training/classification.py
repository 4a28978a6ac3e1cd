"""Train the multi-label findings classifier (one sigmoid per finding) on an images folder + NIH-style CSV.

Starts from the shipped MobileNetV3-Small (cxr15_mobilenetv3, sha256-checked through the registry) with its
softmax head turned into 14 sigmoid outputs (see cxr14_mobilenetv3_multilabel.from_single_label), or from a
trained version of this family (--init ID@VERSION), or from scratch (--init none). The validation split is by
patient, fixed by the seed. Loss: binary cross-entropy with a per-finding positive weight (negatives /
positives on the training split, capped), for the class imbalance. First the head alone is trained, then the
whole network at a lower learning rate. The epoch with the best mean validation AUC is kept; each finding's
operating threshold is its Youden point on the validation split; both are stored in model.json.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inference import calibration, evaluation, metrics
from inference.models import cxr14_mobilenetv3_multilabel as family
from inference.runner import Runner
from inference.training import common
from inference.training.data import Augment, ClassificationData, DatasetError, read_labels_csv
from inference.types import RESEARCH_USE

log = logging.getLogger("cxr_review.training")

MEAN, STD = 0.485, 0.229  # the shipped classifier's normalisation; kept so the backbone sees what it knows


@dataclass
class ClassificationConfig:
    images: Path
    labels: Path
    out: Path
    models_dir: Path | None = None  # where the --init weights are found (built-in models)
    init: str = "cxr15_mobilenetv3"
    head: str = "logsoftmax"  # see inference/models/cxr14_mobilenetv3_multilabel.py
    model_id: str = family.FAMILY
    version: str | None = None
    device: str = "auto"
    epochs: int = 12
    head_epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3  # head phase; the full network trains at lr / 10
    weight_decay: float = 1e-4
    pos_weight_max: float = 10.0
    size: int = 224
    val_fraction: float = 0.3
    seed: int = 0
    max_minutes: float | None = None
    limit: int | None = None
    steps_per_epoch: int | None = None
    keep_checkpoint: bool = False
    progress: bool = True
    threads: int | None = None
    calibrate: bool = True  # Platt scaling fitted on the validation split (inference/calibration.py)
    only: frozenset[str] | None = None  # train on these image files only (cross-validation folds)
    augment: Augment = field(
        default_factory=lambda: Augment(
            rotate_deg=7, scale=0.08, shift=0.05, brightness=0.08, contrast=0.15, gamma=0.2
        )
    )


def _initial_model(cfg: ClassificationConfig, labels: tuple[str, ...]) -> tuple[torch.nn.Module, str]:
    if cfg.init in ("", "none"):
        return family.make(len(labels), cfg.head), "random initialisation"
    spec, state = common.resolve_init(cfg.init, cfg.models_dir, cfg.out)
    if spec.builtin and spec.model_id == "cxr15_mobilenetv3":
        return family.from_single_label(state, cfg.head), f"{spec.ref} (sha256 {spec.weights_sha256})"
    if spec.family == family.FAMILY and tuple(spec.labels) == labels and spec.arch.get("head") == cfg.head:
        model = family.make(len(labels), cfg.head)
        model.load_state_dict(state)
        return model, f"{spec.ref} (sha256 {spec.weights_sha256})"
    raise DatasetError(f"--init {cfg.init}: cannot start a {family.FAMILY} model from {spec.ref}")


def _logits(model, data: ClassificationData, device, batch_size: int) -> np.ndarray:
    """Raw finding logits (N x K); AUCs are the same on logits and on their sigmoids."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            x, _ = data.batch(range(start, min(start + batch_size, len(data))))
            out.append(model(((x - MEAN) / STD).to(device)).float().cpu().numpy())
    return np.concatenate(out)


def _calibrate(
    logits: np.ndarray, targets: np.ndarray, labels: Sequence[str]
) -> tuple[dict | None, np.ndarray]:
    """(model.json "calibration" or None, calibrated validation scores); None when the fitted slope is not
    positive, which would reverse the ranking."""
    slope, intercepts = calibration.fit_platt(logits, targets)
    if not slope > 0:
        log.warning("calibration skipped: fitted slope %.3g is not positive", slope)
        return None, calibration.sigmoid(logits)
    meta = {
        "method": "Platt scaling: sigmoid(slope * logit + intercept[finding]), one slope for all findings, "
        "smoothed targets; fitted on the validation split (so calibration figures on it are optimistic)",
        "slope": slope,
        "intercepts": {label: float(c) for label, c in zip(labels, intercepts, strict=True)},
    }
    return meta, calibration.apply_platt(logits, slope, intercepts)


def _mean_auc(targets: np.ndarray, scores: np.ndarray) -> tuple[float, dict[str, float]]:
    per = {}
    for j, label in enumerate(family.FINDINGS):
        y = targets[:, j] > 0
        if y.any() and (~y).any():
            per[label] = metrics.roc_auc(y, scores[:, j])
    return float(np.mean(list(per.values()))), per


def train(cfg: ClassificationConfig, argv: Sequence[str] | None = None) -> dict:
    run = common.start_run(cfg.seed, cfg.device, cfg.threads)
    clock, rng_np, device = run.clock, run.rng, run.device
    labels = family.FINDINGS
    rows = read_labels_csv(cfg.labels, cfg.images)[: cfg.limit]
    if cfg.only is not None:
        rows = [r for r in rows if r.file in cfg.only]
    train_files, val_files = common.split_by_group([r.file for r in rows], [r.patient for r in rows],
                                                   cfg.val_fraction, cfg.seed)  # fmt: skip
    by_file = {r.file: r for r in rows}
    size = (cfg.size, cfg.size)
    train_data = ClassificationData(cfg.images, [by_file[f] for f in train_files], labels, size)
    val_data = ClassificationData(cfg.images, [by_file[f] for f in val_files], labels, size)

    version, vdir, epoch_log = common.new_version_dir(cfg.out, cfg.model_id, cfg.version)

    model, init_from = _initial_model(cfg, labels)
    model.to(device)
    pos = train_data.targets.sum(0)
    neg = len(train_data) - pos
    pos_weight = torch.tensor(np.clip(neg / np.maximum(pos, 1), 1.0, cfg.pos_weight_max), dtype=torch.float32)
    steps = -(-len(train_data) // cfg.batch_size)
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)

    def optimiser(params, lr, epochs):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps))
        return opt, sched

    head = model.head_parameters()
    head_epochs = min(cfg.head_epochs, cfg.epochs)
    opt, sched = optimiser(head, cfg.lr, head_epochs)
    base_auc, _ = _mean_auc(val_data.targets, _logits(model, val_data, device, cfg.batch_size))
    best = common.BestKeeper(vdir / common.CHECKPOINT_FILE, cfg.max_minutes, clock)
    best.offer(model, base_auc, 0)  # fine-tuning has to beat the initial weights
    epoch_log({"epoch": 0, "val_mean_auc": base_auc, "note": f"initial weights: {init_from}"})
    for epoch in range(1, cfg.epochs + 1):
        if epoch == head_epochs + 1:  # fine-tune everything at a lower rate
            opt, sched = optimiser(model.parameters(), cfg.lr / 10, cfg.epochs - head_epochs)
        t0 = common.Stopwatch()
        model.train()
        order = rng_np.permutation(len(train_data))
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)][:steps]
        losses = []
        for idx in common.progress(batches, len(batches), f"epoch {epoch}/{cfg.epochs}", cfg.progress):
            if len(idx) < 2:
                continue  # BatchNorm1d in the head needs two samples
            x, y = train_data.batch(idx, rng_np, cfg.augment)
            logits = model(((x - MEAN) / STD).to(device))
            loss = F.binary_cross_entropy_with_logits(logits, y.to(device), pos_weight=pos_weight.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val_auc, _ = _mean_auc(val_data.targets, _logits(model, val_data, device, cfg.batch_size))
        improved = best.offer(model, val_auc, epoch)
        epoch_log({
            "epoch": epoch, "phase": "head" if epoch <= head_epochs else "all",
            "train_loss": float(np.mean(losses)) if losses else float("nan"), "val_mean_auc": val_auc,
            "best": improved, "lr": float(sched.get_last_lr()[0]), "seconds": t0.s,
        })  # fmt: skip
        if best.out_of_time(epoch):
            break
    train_seconds = clock.s

    best.restore(model)
    val_logits = _logits(model, val_data, "cpu", cfg.batch_size)
    calibrated = None
    if cfg.calibrate:
        calibrated, val_scores = _calibrate(val_logits, val_data.targets, labels)
    else:
        val_scores = calibration.sigmoid(val_logits)
    thresholds = {}
    for j, label in enumerate(labels):
        y = val_data.targets[:, j] > 0
        thresholds[label] = (
            metrics.youden_threshold(y, val_scores[:, j])[0] if y.any() and (~y).any() else 0.5
        )

    meta = common.base_meta(model_id=cfg.model_id, version=version, task="classification",
                            family=family.FAMILY, argv=argv, code=run.code)  # fmt: skip
    meta |= {
        "labels": list(labels),
        "activation": "sigmoid",
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "thresholds_rule": "Youden point (max sensitivity + specificity - 1) per finding on the validation split",
        "input_size": [cfg.size, cfg.size],
        "normalisation": f"grayscale, antialiased bilinear resize to {cfg.size}x{cfg.size}, (x - {MEAN}) / {STD}",
        "mean": MEAN,
        "std": STD,
        "arch": {"backbone": "MobileNetV3-Small (cxr15_mobilenetv3 layout)", "head": cfg.head},
        "intended_use": f"{RESEARCH_USE} Multi-label triage demo: an independent probability per NIH finding; "
        f"fine-tuned on {len(train_data)} NIH images only, so its figures carry wide uncertainty.",
        "source": f"Fine-tuned by CXR Review from {init_from} on NIH ChestX-ray14 images (multi-label, "
        "patient split). Inherits the research-demo status of the shipped weights.",
        "data": {
            "images": str(cfg.images),
            "labels": str(cfg.labels),
            "file_list_sha256": common.file_list_sha256([cfg.images / r.file for r in rows] + [cfg.labels]),
            "n_images": len(rows),
            "n_train": len(train_files),
            "n_val": len(val_files),
            "n_val_patients": len({by_file[f].patient for f in val_files}),
            "split": f"by patient ('Patient ID'), seed {cfg.seed}, validation fraction {cfg.val_fraction}",
            "train_positives": {k: int(v) for k, v in zip(labels, pos, strict=True)},
            "val_positives": {k: int(v) for k, v in zip(labels, val_data.targets.sum(0), strict=True)},
            "val_files": sorted(val_files),
        },  # fmt: skip
        "training": {
            **{
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(cfg).items()
                if k
                not in ("images", "labels", "out", "augment", "model_id", "version", "models_dir", "only")
            },
            "augment": asdict(cfg.augment),
            "device": str(device),
            "init_from": init_from,
            "best_epoch": best.epoch,
            "epochs_run": len(epoch_log.history) - 1,
            "val_mean_auc_initial_weights": base_auc,
            "best_val_mean_auc": best.score,
            "pos_weight": {k: round(float(v), 3) for k, v in zip(labels, pos_weight, strict=True)},
            "loss": "binary cross-entropy with per-finding pos_weight = min(neg/pos, pos_weight_max)",
            "wall_seconds": round(train_seconds, 1),
            "selection_note": "epoch chosen on the validation split, so its validation AUC is optimistic",
        },  # fmt: skip
        "validation": {},
    }
    if calibrated:
        meta["calibration"] = calibrated

    def evaluate(runner: Runner, ref: str) -> dict:
        report = evaluation.evaluate_classification(
            runner, ref, cfg.images, [by_file[f] for f in val_files], n_boot=evaluation.N_BOOT, seed=cfg.seed
        )
        return {
            "n_images": report["n_images"], "mean_auc": report["mean_auc"],
            "auc": {k: {"auc": v["auc"], "ci95": v["ci95"], "n_pos": v["n_pos"]} for k, v in report["per_finding"].items()},
            "multi_finding": {"n_images": report["multi_finding"]["n_images"],
                              "mean_auc": report["multi_finding"]["mean_auc"]},
        }  # fmt: skip

    return common.publish(vdir, model, meta, out=cfg.out, device=device, clock=clock, evaluate=evaluate,
                          keep_checkpoint=cfg.keep_checkpoint, history=epoch_log.history)  # fmt: skip


def cross_validate(cfg: ClassificationConfig, folds: int = 5, argv: Sequence[str] | None = None) -> dict:
    """Out-of-fold comparison of this training recipe with the weights it starts from (`cfg.init`).

    Patients are dealt into `folds` groups (fixed by the seed). Each group is held out once: the recipe runs
    on the other patients exactly as `train` does (its own patient split inside them picks the epoch and the
    thresholds), and both the trained model and the starting weights score the held-out images. So every
    image is scored by a model that never saw it, and no choice was made on it. Versions go to `cfg.out`
    (scratch). Returns mean AUCs on all images and on those with two or more findings, and their paired
    difference with a bootstrap interval: within folds (the fair figure, each model ranks only its own
    images) and pooled over all out-of-fold scores.
    """
    if folds < 2:
        raise DatasetError("--cv needs at least 2 folds")
    rows = read_labels_csv(cfg.labels, cfg.images)[: cfg.limit]
    patients, fold = common.patient_folds([r.patient for r in rows], folds, cfg.seed)
    labels = family.FINDINGS
    ours = np.zeros((len(rows), len(labels)))
    start = np.zeros_like(ours)
    if not cfg.init or cfg.init.lower() == "none":
        raise DatasetError("--cv compares the recipe with its starting weights: it needs --init ID[@VERSION]")
    registry = common.registry_with(cfg.models_dir, cfg.out)
    start_spec = registry.check(registry.resolve(cfg.init))  # before any fold trains: a bad --init fails now
    runner = Runner(registry, cfg.device)
    fold_reports = []
    for k in range(folds):
        held = [i for i in range(len(rows)) if fold[i] == k]
        keep = frozenset(r.file for r, f in zip(rows, fold, strict=True) if f != k)
        result = train(replace(cfg, only=keep, version=f"0.0.{k + 1}", keep_checkpoint=False), argv)
        held_rows = [rows[i] for i in held]
        for target, model in (
            (ours, registry.resolve(f"{cfg.model_id}@{result['version']}")),
            (start, start_spec),
        ):
            spec, scores = evaluation.classification_scores(runner, model, cfg.images, held_rows)
            target[held] = scores[:, [spec.labels.index(label) for label in labels]]
        fold_reports.append({"fold": k + 1, "n_held_out": len(held), "version": result["version"],
                             "best_epoch": result["training"]["best_epoch"]})  # fmt: skip
    y = np.array([[label in r.findings for label in labels] for r in rows])
    multi = np.array([len(r.findings) >= 2 for r in rows])
    out = {"task": "classification cross-validation", "folds": folds, "n_images": len(rows),
           "n_patients": len(patients), "recipe": cfg.model_id, "start": cfg.init, "fold_runs": fold_reports}  # fmt: skip
    for name, mask in (("all", np.ones(len(rows), bool)), ("multi_finding", multi)):
        yy, a, b = y[mask], ours[mask], start[mask]
        within = metrics.paired_bootstrap_mean_auc_diff(yy, a, b, seed=cfg.seed, strata=fold[mask])
        pooled = metrics.paired_bootstrap_mean_auc_diff(yy, a, b, seed=cfg.seed)
        out[name] = {
            "n_images": int(mask.sum()),
            # the headline: AUC inside each fold (one model's scores), averaged over folds and findings
            "within_folds": {"ours": within["a"], "start": within["b"], "ours_minus_start": within},
            # all out-of-fold scores ranked together: fold models on different scales count against "ours"
            "pooled": {"ours": pooled["a"], "start": pooled["b"], "ours_minus_start": pooled},
            "per_finding_pooled": {
                label: {"ours": metrics.roc_auc(yy[:, j], a[:, j]), "start": metrics.roc_auc(yy[:, j], b[:, j]),
                        "n_pos": int(yy[:, j].sum())}
                for j, label in enumerate(labels) if yy[:, j].any() and not yy[:, j].all()
            },
        }  # fmt: skip
    return out
