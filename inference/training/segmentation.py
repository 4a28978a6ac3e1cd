"""Train the anatomy U-Net (segmentation_models_pytorch) on an images folder + label-map folder.

Label maps hold 0 background, 1 lungs, 2 heart, 3 clavicles (SCR/JSRT style). The validation split is by image,
fixed by the seed; the checkpoint with the best mean validation Dice (lungs, heart, clavicles at network
resolution) is kept, rounded to fp16, written with its model.json, and then measured once more through the
runner at each label map's native resolution: those are the metrics stored in model.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inference import evaluation, metrics
from inference.models import anatomy_unet_smp
from inference.runner import Runner
from inference.training import common
from inference.training.data import Augment, DatasetError, SegmentationData, paired_files
from inference.types import ANATOMY_LABELS, RESEARCH_USE

CLASSES = evaluation.CLASSES
# Test-time views (see runner._tta_log_probs): zooms and shifts inside the training augmentation's range.
# On anatomy_unet_smp@1.1.0's validation images they added about +0.005 clavicle and +0.003 heart Dice.
TTA_VIEWS = (
    {"scale": 1.0},
    {"scale": 0.94, "shift": [0.02, 0.02]},
    {"scale": 1.06, "shift": [-0.02, 0.02]},
    {"scale": 0.97, "shift": [-0.02, -0.02]},
    {"scale": 1.03, "shift": [0.02, -0.02]},
)


@dataclass
class SegmentationConfig:
    images: Path
    masks: Path
    out: Path
    model_id: str = anatomy_unet_smp.FAMILY
    version: str | None = None  # None: next free version under out/model_id
    device: str = "auto"
    epochs: int = 60
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    size: int = 256
    encoder: str = "tu-mobilenetv3_large_100"
    decoder_channels: tuple[int, ...] = (96, 64, 32, 16, 16)
    val_fraction: float = 0.2
    seed: int = 0
    max_minutes: float | None = None  # stop after the epoch that passes this wall-clock budget
    limit: int | None = None  # use only the first N image pairs (smoke tests)
    steps_per_epoch: int | None = None  # cap on optimiser steps per epoch (smoke tests)
    keep_checkpoint: bool = False
    progress: bool = True
    threads: int | None = None
    # Warm start from a trained version of this family (e.g. continue a 256 px model at 384 px); its
    # architecture and normalisation are kept. models_dir is where the registry looks for it.
    init: str | None = None
    models_dir: Path | None = None
    tta: bool = False  # store TTA_VIEWS in model.json: the runner then averages them (5x the forward time)
    # Percentiles of preprocess.stretch_contrast applied to every image in training and by the runner
    # (stored in model.json); None keeps the pixels as read (with --init: the start's setting;
    # the start's mean/std stay in any case, so a new stretch is learnt by fine-tuning, as 1.2.0 was).
    stretch: tuple[float, float] | None = None
    # Stochastic weight averaging: from this epoch on the learning rate stays at --lr (after a one-epoch
    # warm-up) and the weights at the end of each epoch are averaged; the average, with BatchNorm statistics
    # recomputed on the training images, competes with the single epochs for the checkpoint.
    swa_from: int | None = None
    # Soft Dice per image (the validation metric is a mean of per-image Dice, so small or hard hearts count
    # as much as large ones) instead of over the whole batch.
    dice_per_image: bool = False
    only: frozenset[str] | None = None  # train on these image files only (fine-tuning from corrections)
    augment: Augment = field(default_factory=Augment)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, classes: Sequence[int], per_image: bool = False
) -> torch.Tensor:
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (2, 3) if per_image else (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1) / (denom + 1)
    return 1 - dice[..., list(classes)].mean()


def _val_dice(model, data: SegmentationData, device, batch_size: int) -> dict[str, float]:
    """Mean Dice per class over validation images at network resolution (fast, used to pick the checkpoint)."""
    model.eval()
    scores = {name: [] for name in CLASSES.values()}
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            x, y = data.batch(idx)
            pred = model(((x - data.mean) / data.std).to(device)).argmax(1).cpu().numpy()
            for p, t in zip(pred, y.numpy(), strict=True):
                for name, d in metrics.dice_per_class(p, t, CLASSES).items():
                    scores[name].append(d)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _recompute_batchnorm(model, data: SegmentationData, mean, std, device, batch_size: int, rng, aug) -> None:
    """BatchNorm running statistics of averaged weights, as a cumulative mean over one pass of augmented
    training batches (the statistics of the averaged epochs do not belong to the averaged weights)."""
    order = rng.permutation(len(data))
    batches = (
        (data.batch(order[i : i + batch_size], rng, aug)[0] - mean) / std
        for i in range(0, len(order), batch_size)
    )
    torch.optim.swa_utils.update_bn(batches, model, device)


def train(cfg: SegmentationConfig, argv: Sequence[str] | None = None) -> dict:
    """Train, write `<out>/<model_id>/<version>/` and return a summary (also the model.json content)."""
    run = common.start_run(cfg.seed, cfg.device, cfg.threads)
    clock, rng_np, device = run.clock, run.rng, run.device
    pairs = paired_files(cfg.images, cfg.masks)[: cfg.limit]
    if cfg.only is not None:
        pairs = [p for p in pairs if p[0].name in cfg.only]
    names = [p.name for p, _ in pairs]
    train_names, val_names = common.split_by_group(names, names, cfg.val_fraction, cfg.seed)
    by_name = dict(zip(names, pairs, strict=True))
    size = (cfg.size, cfg.size)
    start = start_state = None
    if cfg.init:
        start, start_state = common.resolve_init(cfg.init, cfg.models_dir, cfg.out)
        if start.family != anatomy_unet_smp.FAMILY:
            raise DatasetError(
                f"--init {cfg.init}: not an {anatomy_unet_smp.FAMILY} version ({start.family})"
            )
    stretch = cfg.stretch
    if start and not stretch:
        stretch = start.contrast_stretch
    train_data = SegmentationData([by_name[n] for n in train_names], size, stretch)
    val_data = SegmentationData([by_name[n] for n in val_names], size, stretch)
    version, vdir, epoch_log = common.new_version_dir(cfg.out, cfg.model_id, cfg.version)

    if start:  # a warm start keeps the architecture and normalisation its weights were trained with
        arch, mean, std = dict(start.arch), start.mean, start.std
        init_from = f"{start.ref} (sha256 {start.weights_sha256})"
    else:
        arch = {
            **anatomy_unet_smp.DEFAULT_ARCH,
            "encoder_name": cfg.encoder,
            "decoder_channels": list(cfg.decoder_channels),
        }
        mean = float(np.mean([i.mean() for i in train_data.images]))
        std = float(np.mean([i.std() for i in train_data.images]))
        init_from = "random initialisation (no pretrained weights)"
    for d in (train_data, val_data):
        d.mean, d.std = mean, std
    model = anatomy_unet_smp.make(arch).to(device)
    if start:
        model.load_state_dict(start_state)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(train_data) / cfg.batch_size)
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)
    if cfg.swa_from:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / steps))
        swa = torch.optim.swa_utils.AveragedModel(model)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(2, cfg.epochs * steps), pct_start=0.1
        )
        swa = None
    best = common.BestKeeper(vdir / common.CHECKPOINT_FILE, cfg.max_minutes, clock)
    for epoch in range(1, cfg.epochs + 1):
        t0 = common.Stopwatch()
        model.train()
        order = rng_np.permutation(len(train_data))
        losses = []
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)][:steps]
        bar = common.progress(batches, len(batches), f"epoch {epoch}/{cfg.epochs}", cfg.progress)
        for idx in bar:
            x, y = train_data.batch(idx, rng_np, cfg.augment)
            x, y = ((x - mean) / std).to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y) + soft_dice_loss(logits, y, list(CLASSES), cfg.dice_per_image)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = _val_dice(model, val_data, device, cfg.batch_size)
        score = float(np.mean(list(val.values())))
        improved = best.offer(model, score, epoch, arch=arch)
        epoch_log({
            "epoch": epoch, "train_loss": float(np.mean(losses)), **{f"val_dice_{k}": v for k, v in val.items()},
            "val_mean_dice": score, "best": improved, "lr": float(sched.get_last_lr()[0]), "seconds": t0.s,
        })  # fmt: skip
        if swa is not None and epoch >= cfg.swa_from:
            swa.update_parameters(model)
        if best.out_of_time(epoch):
            break
    if swa is not None and swa.n_averaged.item() > 0:
        t0 = common.Stopwatch()
        averaged = swa.module
        _recompute_batchnorm(averaged, train_data, mean, std, device, cfg.batch_size, rng_np, cfg.augment)
        val = _val_dice(averaged, val_data, device, cfg.batch_size)
        score = float(np.mean(list(val.values())))
        n_avg = int(swa.n_averaged.item())
        improved = best.offer(averaged, score, f"average of epochs {cfg.swa_from}..{cfg.swa_from + n_avg - 1}",
                              arch=arch)  # fmt: skip
        epoch_log({
            "epoch": "swa", "epochs_averaged": n_avg, **{f"val_dice_{k}": v for k, v in val.items()},
            "val_mean_dice": score, "best": improved, "seconds": t0.s,
        })  # fmt: skip
    train_seconds = clock.s

    best.restore(model)
    meta = common.base_meta(model_id=cfg.model_id, version=version, task="segmentation",
                            family=anatomy_unet_smp.FAMILY, argv=argv, code=run.code)  # fmt: skip
    meta |= {
        "labels": list(ANATOMY_LABELS),
        "thresholds": {},
        "input_size": [cfg.size, cfg.size],
        "normalisation": f"grayscale in [0,1], standard polarity; zero-padded to square, antialiased bilinear "
        f"resize to {cfg.size}x{cfg.size}; (x - {mean:.4f}) / {std:.4f}",
        "mean": round(mean, 6),
        "std": round(std, 6),
        "arch": arch,
        "intended_use": f"{RESEARCH_USE} Lungs/heart/clavicles outlines on frontal (PA) chest radiographs; "
        f"trained by this project on {len(train_data)} JSRT/SCR images, so expect weaker outlines on AP, "
        "paediatric or post-surgical studies.",
        "source": "segmentation_models_pytorch U-Net trained by CXR Review on the JSRT radiographs with SCR "
        f"anatomy masks; initial weights: {init_from}.",
        "data": {
            "images": str(cfg.images),
            "masks": str(cfg.masks),
            "file_list_sha256": common.file_list_sha256([p for pair in pairs for p in pair]),
            "n_images": len(pairs),
            "n_train": len(train_names),
            "n_val": len(val_names),
            "split": f"by image, seed {cfg.seed}, validation fraction {cfg.val_fraction}",
            "val_files": sorted(val_names),
        },  # fmt: skip
        "training": {
            **{
                k: v
                for k, v in asdict(cfg).items()
                if k not in ("images", "masks", "out", "augment", "model_id", "version", "models_dir", "only")
            },
            "augment": asdict(cfg.augment),
            "device": str(device),
            "best_epoch": best.epoch,
            "epochs_run": sum(row["epoch"] != "swa" for row in epoch_log.history),
            "best_val_mean_dice_network_resolution": best.score,
            "wall_seconds": round(train_seconds, 1),
            "loss": "cross-entropy + soft Dice (lungs, heart, clavicles; "
            + ("per image)" if cfg.dice_per_image else "over each batch)"),
        },  # fmt: skip
        "validation": {},
    }
    if stretch:
        meta["contrast_stretch"] = {"percentiles": list(stretch)}
        meta["normalisation"] = (
            f"each image's {stretch[0]}..{stretch[1]} percentiles stretched to 0..1; "
            + (meta["normalisation"])
        )
    if cfg.tta:
        meta["test_time_augmentation"] = {"views": [dict(v) for v in TTA_VIEWS]}

    def evaluate(runner: Runner, ref: str) -> dict:
        report = evaluation.evaluate_segmentation(
            runner, ref, [by_name[n] for n in val_names], per_image=False, progress=cfg.progress
        )
        return {k: report[k] for k in ("resolution", "test_time_views", "n_images", "dice")}

    return common.publish(vdir, model, meta, out=cfg.out, device=device, clock=clock, evaluate=evaluate,
                          keep_checkpoint=cfg.keep_checkpoint, history=epoch_log.history)  # fmt: skip
