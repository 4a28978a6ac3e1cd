"""Training of the quality gate (inference/models/quality_gate_cnn.py) on pictures already loaded as the app
sees them (services/gate_training.py collects and loads them). Pure arrays in, a model version out.

Each picture comes as a 128x128 float image in [0,1] with its kind (frontal, lateral, ct, not_chest, inverted)
and its group (patient or source file). Refusals the data lacks are made from frontal films in training:
inverted grey scale (1 - x), severe rotation (25-180 degrees, or 90/180/270) and severe cropping (a window
of 30-60 % of one side); frontal films themselves are jittered mildly (rotation within 8 degrees, a crop
keeping at least 88 % of each side, gamma), so what is mild is not taught as a refusal."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from inference.models.quality_gate_cnn import CLASSES, SIDE, GateNet, gate_input

CACHE_SIDE = 128
MEAN, STD = 0.5, 0.25
MADE = ("inverted", "rotated", "cropped")  # refusals made from frontal films


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """img rotated about its centre, corners filled with the border's median (as a rotated scan would be)."""
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    fill = float(np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])))
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=fill)


def crop(img: np.ndarray, rng: np.random.Generator, keep: tuple[float, float], both: bool) -> np.ndarray:
    """A window keeping a fraction in `keep` of the height, the width or (both) both, placed at random."""
    h, w = img.shape
    fh = fw = 1.0
    axis = rng.integers(3) if both else rng.integers(2)
    if axis in (0, 2):
        fh = rng.uniform(*keep)
    if axis in (1, 2):
        fw = rng.uniform(*keep)
    ch, cw = max(8, int(h * fh)), max(8, int(w * fw))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return img[y : y + ch, x : x + cw]


def made(kind: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A refusal of `kind` made from a frontal film."""
    if kind == "inverted":
        return 1.0 - jitter(img, rng)
    if kind == "rotated":
        if rng.random() < 0.5:
            return np.ascontiguousarray(np.rot90(img, int(rng.integers(1, 4))))
        return rotate(img, float(rng.choice([-1, 1]) * rng.uniform(25, 180)))
    if kind == "cropped":
        return crop(img, rng, (0.3, 0.6), both=True)
    raise ValueError(kind)


def jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild changes a readable film may show: a small rotation, a slightly tight crop, another gamma."""
    out = rotate(img, float(rng.uniform(-8, 8))) if rng.random() < 0.5 else img
    if rng.random() < 0.5:
        out = crop(out, rng, (0.88, 1.0), both=True)
    return np.clip(out, 0, 1) ** float(np.exp(rng.uniform(-0.3, 0.3)))


def net_input(imgs: list[np.ndarray]) -> torch.Tensor:
    """(N, 1, SIDE, SIDE) normalised tensor, as the runner builds it."""
    arr = np.stack([gate_input(i, SIDE) for i in imgs])
    return torch.from_numpy((arr - MEAN) / STD)[:, None]


def epoch_batch(
    images: np.ndarray, kinds: list[str], rng: np.random.Generator, made_per_frontal: float
) -> tuple[list[np.ndarray], np.ndarray]:
    """One epoch's pictures and class indices: every training picture (frontal ones jittered, the rarer kinds
    repeated so each kind weighs about as much as the made ones), plus refusals made from frontal films."""
    frontal = [i for i, k in enumerate(kinds) if k == "frontal"]
    n_made = int(len(frontal) * made_per_frontal / len(MADE))
    pics, labels = [], []
    counts = {k: kinds.count(k) for k in set(kinds)}
    for i, k in enumerate(kinds):
        reps = 1 if k == "frontal" else max(1, round(n_made / counts[k]))
        for _ in range(reps):
            img = images[i]
            if k == "frontal":
                img = jitter(img, rng)
            elif rng.random() < 0.7:  # the rarer kinds: mirrored, shifted, regraded copies
                img = jitter(img[:, ::-1] if rng.random() < 0.5 else img, rng)
            pics.append(img)
            labels.append(CLASSES.index(k))
    for kind in MADE:
        for i in rng.choice(frontal, n_made):
            pics.append(made(kind, images[i], rng))
            labels.append(CLASSES.index(kind))
    return pics, np.asarray(labels)


def train(
    images: np.ndarray,
    kinds: list[str],
    *,
    epochs: int,
    seed: int,
    width: int = 16,
    lr: float = 3e-3,
    batch: int = 64,
    made_per_frontal: float = 1.0,
    log=None,
) -> GateNet:
    """A GateNet trained from scratch on (images, kinds); `log(record)` gets one dict per epoch."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = GateNet(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(1, epochs + 1):
        pics, labels = epoch_batch(images, kinds, rng, made_per_frontal)
        x, y = net_input(pics), torch.from_numpy(labels)
        order = torch.from_numpy(rng.permutation(len(y)))
        model.train()
        total = 0.0
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            if len(idx) < 2:  # BatchNorm needs two
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if log:
            log({"epoch": epoch, "loss": total / len(y), "pictures": len(y)})
    return model.eval()


@torch.inference_mode()
def probabilities(model: GateNet, imgs: list[np.ndarray]) -> np.ndarray:
    """(N, classes) softmax of a trained model on display images (any size)."""
    out = [F.softmax(model(net_input(imgs[i : i + 256])), 1) for i in range(0, len(imgs), 256)]
    return torch.cat(out).numpy()
