"""Datasets for training and evaluation: folders of 8-bit grayscale images, label-map folders, NIH-style CSVs.

Images are read the way the app hands them to the runner: 8-bit grayscale / 255 -> float32 in [0,1].
Augmentations suit radiographs: small rotation / scale / shift and brightness / contrast / gamma; never a
horizontal flip (it would put the heart on the wrong side without relabelling anything).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from inference import runner
from inference.preprocess import stretch_contrast

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DatasetError(ValueError):
    """A data folder or labels file that cannot be used, with the reason."""


def read_gray(path: Path) -> np.ndarray:
    u8 = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if u8 is None:
        raise DatasetError(f"cannot read image {path}")
    return u8.astype(np.float32) / 255.0


def read_label_map(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None or m.ndim != 2:
        raise DatasetError(f"cannot read label map {path} as a single-channel image")
    return m.astype(np.uint8)


def image_files(folder: Path) -> list[Path]:
    if not Path(folder).is_dir():
        raise DatasetError(f"images folder {folder} not found")
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def paired_files(images: Path, masks: Path, what: str = "a label map") -> list[tuple[Path, Path]]:
    """(image, partner) pairs matched by file stem; images without `what` in `masks` are left out."""
    if not Path(masks).is_dir():
        raise DatasetError(f"folder {masks} not found")
    by_stem = {p.stem: p for p in image_files(masks)}
    pairs = [(p, by_stem[p.stem]) for p in image_files(images) if p.stem in by_stem]
    if not pairs:
        raise DatasetError(f"no image in {images} has {what} of the same name in {masks}")
    return pairs


@dataclass(frozen=True)
class LabelledImage:
    file: str
    patient: str
    findings: tuple[str, ...]  # () for "No Finding"


def read_labels_csv(path: Path, images: Path) -> list[LabelledImage]:
    """Rows of an NIH Data_Entry-style CSV ("Image Index", "Finding Labels" |-separated or "No Finding",
    "Patient ID") whose image exists in `images`."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DatasetError(f"cannot read labels file {path}: {exc}") from exc
    need = {"Image Index", "Finding Labels"}
    if not rows or not need <= set(rows[0]):
        raise DatasetError(f"{path} needs the columns {sorted(need)} (NIH Data_Entry_2017 layout)")
    present = {p.name for p in image_files(images)}
    out = []
    for r in rows:
        if r["Image Index"] not in present:
            continue
        labels = tuple(
            x.strip() for x in r["Finding Labels"].split("|") if x.strip() and x.strip() != "No Finding"
        )
        out.append(LabelledImage(r["Image Index"], r.get("Patient ID") or r["Image Index"], labels))
    if not out:
        raise DatasetError(f"none of the images named in {path} is in {images}")
    return out


def resize_like_runner(img: np.ndarray, size: tuple[int, int], pad_square: bool = False) -> np.ndarray:
    """What the runner feeds the network (before mean/std): optional zero-pad to square, then antialiased
    bilinear resize (torch), so that training sees exactly the inference preprocessing."""
    x = torch.from_numpy(np.ascontiguousarray(img, np.float32))[None, None]
    if pad_square:
        x = runner.pad_square(x)[0]
    return runner.resize(x, size)[0, 0].numpy()


@dataclass(frozen=True)
class Augment:
    """Random affine (about the image centre) and intensity changes; strengths are the +- ranges."""

    rotate_deg: float = 8.0
    scale: float = 0.08
    shift: float = 0.05
    brightness: float = 0.08
    contrast: float = 0.15
    gamma: float = 0.25  # log-uniform in [1/(1+g), 1+g]

    def matrix(self, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        angle = rng.uniform(-self.rotate_deg, self.rotate_deg)
        scale = rng.uniform(1 - self.scale, 1 + self.scale)
        tx, ty = rng.uniform(-self.shift, self.shift, 2) * (w, h)
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
        m[:, 2] += (tx, ty)
        return m

    def intensity(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = math.exp(rng.uniform(-math.log1p(self.gamma), math.log1p(self.gamma)))
        out = np.clip(img, 0, 1) ** g
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        out = (out - 0.5) * c + 0.5 + rng.uniform(-self.brightness, self.brightness)
        return np.clip(out, 0, 1).astype(np.float32)


def warp(img: np.ndarray, m: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    h, w = size
    return cv2.warpAffine(
        img, m, (w, h), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )  # fmt: skip


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine of x -> outer(inner(x))."""
    a = np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]])
    return a[:2]


class SegmentationData:
    """Images resized as the runner does; label maps kept at native resolution and warped straight to the
    network size with nearest-neighbour (one resampling, not two)."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        size: tuple[int, int],
        stretch: tuple[float, float] | None = None,
    ):
        """`stretch`: percentiles for preprocess.stretch_contrast, as the runner applies them."""
        self.size = size
        self.files = [p.name for p, _ in pairs]
        self.images, self.masks, self.to_net = [], [], []
        for img_path, mask_path in pairs:
            img, mask = read_gray(img_path), read_label_map(mask_path)
            if stretch:
                img = stretch_contrast(img, *stretch)
            if img.shape != mask.shape:
                raise DatasetError(f"{img_path.name}: image {img.shape} and label map {mask.shape} differ")
            side, top, left = runner.square_offsets(*img.shape)
            self.images.append(resize_like_runner(img, size, pad_square=True))
            self.masks.append(mask)
            # native pixel -> padded square -> network pixel (pixel centres: x' = (x + 0.5) * s - 0.5)
            sx, sy = size[1] / side, size[0] / side
            self.to_net.append(
                np.array([[sx, 0, (left + 0.5) * sx - 0.5], [0, sy, (top + 0.5) * sy - 0.5]], np.float64)
            )

    def __len__(self) -> int:
        return len(self.images)

    def sample(
        self, i: int, rng: np.random.Generator | None, aug: Augment | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if rng is None or aug is None:
            m = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
            img = self.images[i]
        else:
            m = aug.matrix(rng, self.size)
            img = aug.intensity(warp(self.images[i], m, self.size), rng)
        mask = warp(self.masks[i], compose(m, self.to_net[i]), self.size, nearest=True)
        return img, mask

    def batch(self, idx: Sequence[int], rng=None, aug=None) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sample(i, rng, aug) for i in idx]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        return x, y


class ClassificationData:
    """Images resized as the runner does, with their multi-hot finding vectors."""

    def __init__(
        self, images: Path, rows: Sequence[LabelledImage], labels: Sequence[str], size: tuple[int, int]
    ):
        self.size = size
        self.files = [r.file for r in rows]
        self.images = [resize_like_runner(read_gray(images / r.file), size) for r in rows]
        self.targets = np.array([[label in r.findings for label in labels] for r in rows], np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def batch(
        self, idx: Sequence[int], rng=None, aug: Augment | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for i in idx:
            img = self.images[i]
            if rng is not None and aug is not None:
                img = aug.intensity(warp(img, aug.matrix(rng, self.size), self.size), rng)
            out.append(img)
        return torch.from_numpy(np.stack(out))[:, None], torch.from_numpy(self.targets[list(idx)])
