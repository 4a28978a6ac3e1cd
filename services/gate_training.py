"""`cxr-review train gate`: the quality gate's data, training and held-out figures.

The pictures are read exactly as the app reads them (dicom_io, then analysis.model_input), from:

- frontal films: NIH (`nih/images`, by patient), JSRT (`jsrt/images512`), the frontal (PA, AP, AP Supine) X-ray
  rows of `covid_followup` (by patient); the two NIH images stored inverted are inverted, not frontal;
- refusals: the `covid_followup` rows with view L (lateral) and Axial/Coronal (CT slices), the sample pictures
  shipped inside installed Python packages that import accepts (photographs, plots, drawings, test patterns,
  a leg radiograph; a chest film among them counts as frontal), and pictures made here (gradients, noise,
  shapes, text);
- inverted, rotated and cropped films made from the frontal ones (in training at random; for the figures,
  one of each from every held-out frontal film).

Groups (patient, source file, or made picture) are split 70/30 by a hash of (seed, group): no patient or
source is on both sides. The figures are measured on the held-out side only and written into model.json.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inference.models.quality_gate_cnn import CLASSES, FRONTAL, verdict
from inference.training import common
from inference.training import gate as gate_train
from services import analysis, settings
from viewer import dicom_io

log = logging.getLogger("cxr_review.training")
MODEL_ID = "quality_gate"
INVERTED_NIH = {"00017625_000.png", "00017999_000.png"}  # stored inverted (README, "inverted grey scale")
FRONTAL_VIEWS = {"PA", "AP", "AP Supine"}
SAMPLE_PACKAGES = (
    "sklearn",
    "pydicom",
    "data_store",
    "networkx",
    "sympy",
    "streamlit",
    "matplotlib",
    "skimage",
)
SAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}
CHEST_SAMPLES = {"RG1"}  # pydicom-data's NEMA WG04 chest CR (RG1_*.dcm)
PASS_THRESHOLD = 0.5


@dataclass(frozen=True)
class Source:
    path: str  # file, or "made:<n>" for a picture made here
    kind: str  # one of CLASSES
    group: str  # patient or source: never on both sides of the split
    report: str  # the row of the figures it counts in


def _covid(shared: Path) -> list[Source]:
    import csv

    root = shared / "covid_followup"
    out = []
    with open(root / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            view, path = row["view"], str(root / "images" / row["file"])
            group = f"covid:{row['patientid']}"
            if row["modality"] == "CT" or view in ("Axial", "Coronal"):
                out.append(Source(path, "ct", group, "CT slice (covid_followup)"))
            elif view == "L":
                out.append(Source(path, "lateral", group, "lateral (covid_followup)"))
            elif view in FRONTAL_VIEWS:
                out.append(Source(path, FRONTAL, group, "frontal covid_followup"))
    return out


def _package_samples() -> list[Source]:
    out = []
    for name in SAMPLE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for base in spec.submodule_search_locations:
            for p in sorted(Path(base).rglob("*")):
                if p.suffix.lower() not in SAMPLE_SUFFIXES or not p.is_file() or p.stat().st_size < 4096:
                    continue
                # DICOM test files come in several encodings of one picture: grouped by the name's first part
                stem = p.stem.split("_")[0].split("-")[0] if p.suffix == ".dcm" else p.stem
                chest = p.suffix == ".dcm" and stem in CHEST_SAMPLES
                out.append(Source(
                    str(p), FRONTAL if chest else "not_chest", f"{name}:{stem}",
                    "frontal DICOM (pydicom-data WG04)" if chest else "non-chest (package sample pictures)",
                ))  # fmt: skip
    return out


def collect(shared: Path, made: int = 120) -> list[Source]:
    """Every source picture with its kind, group and figures row."""
    import csv

    out = []
    with open(shared / "nih" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["Image Index"]
            inv = name in INVERTED_NIH
            out.append(Source(
                str(shared / "nih" / "images" / name), "inverted" if inv else FRONTAL, f"nih:{row['Patient ID']}",
                "inverted (stored so, NIH)" if inv else "frontal NIH",
            ))  # fmt: skip
    for p in sorted((shared / "jsrt" / "images512").glob("*.png")):
        out.append(Source(str(p), FRONTAL, f"jsrt:{p.stem}", "frontal JSRT"))
    out += _covid(shared) + _package_samples()
    out += [Source(f"made:{i}", "not_chest", f"made:{i}", "non-chest (made here)") for i in range(made)]
    return out


def made_picture(i: int, side: int = 256) -> np.ndarray:
    """A picture that is no radiograph: gradients, noise, shapes, text and stripes, mixed by seed i."""
    rng = np.random.default_rng(10_000 + i)
    yy, xx = np.mgrid[0:side, 0:side] / side
    kind = i % 5
    if kind == 0:
        img = rng.uniform() * xx + rng.uniform() * yy + rng.uniform(0, 0.3)
    elif kind == 1:
        img = cv2.GaussianBlur(rng.random((side, side)), (0, 0), float(rng.uniform(1, 12)))
    elif kind == 2:
        img = np.full((side, side), rng.uniform())
        for _ in range(rng.integers(3, 12)):
            c = (int(rng.integers(side)), int(rng.integers(side)))
            cv2.circle(img, c, int(rng.integers(8, side // 3)), float(rng.uniform()), -1)
            p0 = tuple(int(v) for v in rng.integers(0, side, 2))
            cv2.rectangle(img, p0, tuple(int(v) for v in rng.integers(0, side, 2)), float(rng.uniform()), -1)
    elif kind == 3:
        img = np.full((side, side), int(rng.integers(150, 256)), np.uint8)
        for r in range(rng.integers(4, 14)):
            cv2.putText(img, "".join(rng.choice(list("abcdefghij XYZ0123"), 12)), (4, 20 + r * 18),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, int(rng.integers(0, 100)), 1)  # fmt: skip
    else:
        f = rng.uniform(2, 20)
        img = 0.5 + 0.5 * np.sin(
            2 * np.pi * f * (xx * np.cos(rng.uniform(0, 3)) + yy * np.sin(rng.uniform(0, 3)))
        )
    img = np.asarray(img, np.float64)
    return ((img - img.min()) / max(1e-6, np.ptp(img))).astype(np.float32)


def picture(src: Source, side: int = gate_train.CACHE_SIDE) -> np.ndarray | None:
    """The source as the models see it, resized to side x side; None when import would refuse the file."""
    if src.path.startswith("made:"):
        x = made_picture(int(src.path.split(":")[1]))
    else:
        try:
            x = analysis.model_input(dicom_io.load(src.path))
        except dicom_io.ImageRejected:
            return None
    return gate_train.gate_input(x, side)


ALWAYS_HELD_OUT = {"data_store:RG3"}  # the one radiograph of another body part (a leg): kept for the figures


def held_out(group: str, seed: int, fraction: float = 0.3) -> bool:
    if group in ALWAYS_HELD_OUT:
        return True
    return int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest(), 16) % 1000 < fraction * 1000


def held_out_paths(shared: Path, report: str, seed: int = 0) -> list[str]:
    """The files of one figures row that a gate trained with `seed` did not train on."""
    return [s.path for s in collect(shared, made=0) if s.report == report and held_out(s.group, seed)]


def load_all(sources: list[Source], cache: Path | None) -> tuple[list[Source], np.ndarray]:
    """(the sources import accepts, their pictures), read from `cache` (an .npz) when it holds them."""
    key = hashlib.sha256("\n".join(s.path for s in sources).encode()).hexdigest()
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if str(data["key"]) == key:
            keep = data["keep"]
            return [s for s, k in zip(sources, keep, strict=True) if k], data["images"]
    pics = [picture(s) for s in sources]
    keep = np.array([p is not None for p in pics])
    images = np.stack([p for p in pics if p is not None]).astype(np.float32)
    if cache is not None:
        np.savez_compressed(cache, key=key, keep=keep, images=images)
    return [s for s, k in zip(sources, keep, strict=True) if k], images


def evaluation_set(
    sources: list[Source], images: np.ndarray, seed: int
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(pictures, kinds, rows) of the held-out side: the pictures as they are, and an inverted, a rotated and a
    cropped picture made from each held-out frontal film (fixed by the seed)."""
    rng = np.random.default_rng(seed + 1)
    pics, kinds, rows = [], [], []
    for s, img in zip(sources, images, strict=True):
        pics.append(img)
        kinds.append(s.kind)
        rows.append(s.report)
        if s.kind == FRONTAL:
            for kind in gate_train.MADE:
                pics.append(gate_train.made(kind, img, rng))
                kinds.append(kind)
                rows.append(f"{kind} (made from held-out frontal films)")
    return pics, kinds, rows


def figures(probs: np.ndarray, kinds: list[str], rows: list[str], threshold: float) -> dict:
    """Per row: n, accepted or refused (as the row should be), and the share right; plus the two goals."""
    out: dict[str, dict] = {}
    passed = [verdict(dict(zip(CLASSES, map(float, p), strict=True)), threshold)[0] for p in probs]
    for row in sorted(set(rows)):
        idx = [i for i, r in enumerate(rows) if r == row]
        frontal = kinds[idx[0]] == FRONTAL
        right = sum(passed[i] == frontal for i in idx)
        out[row] = {"n": len(idx), "should": "accept" if frontal else "refuse", "right": right,
                    "rate": round(right / len(idx), 4)}  # fmt: skip
    acc = [passed[i] for i, k in enumerate(kinds) if k == FRONTAL]
    ref = [not passed[i] for i, k in enumerate(kinds) if k != FRONTAL]
    real_ref = [not passed[i] for i, k in enumerate(kinds) if k != FRONTAL and "made" not in rows[i]]
    return {
        "per_kind": out,
        "frontal_accepted": round(float(np.mean(acc)), 4),
        "refused_all": round(float(np.mean(ref)), 4),
        "refused_real_pictures": round(float(np.mean(real_ref)), 4) if real_ref else None,
        "n_frontal": len(acc),
        "n_refusals": len(ref),
    }


def fold_of(group: str, seed: int, k: int) -> int:
    return int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest(), 16) % k


def cross_validate(args) -> dict:
    """The recipe's figures out of fold: K models, each trained without one fold of groups and measured on it
    (every real picture measured once, by a model that never saw its patient or source). Writes no version."""
    common.start_run(args.seed, "cpu", args.threads)
    sources, images = load_all(collect(Path(args.shared)), args.cache)
    fold = np.array([fold_of(s.group, args.seed, args.cv) for s in sources])
    probs, kinds, rows = [], [], []
    for k in range(args.cv):
        val = fold == k
        tr_kinds = [s.kind for s, v in zip(sources, val, strict=True) if not v]
        model = gate_train.train(images[~val], tr_kinds, epochs=args.epochs, seed=args.seed,
                                 **({"lr": args.lr} if args.lr else {}))  # fmt: skip
        common.rounded_fp16(model)
        va_src = [s for s, v in zip(sources, val, strict=True) if v]
        pics, kk, rr = evaluation_set(va_src, images[val], args.seed)
        probs.append(gate_train.probabilities(model, pics))
        kinds += kk
        rows += rr
        log.info("fold %d of %d done", k + 1, args.cv)
    return {"cv_folds": args.cv, "epochs": args.epochs, "seed": args.seed,
            "out_of_fold": figures(np.concatenate(probs), kinds, rows, PASS_THRESHOLD)}  # fmt: skip


def run(args) -> dict:
    """Train, measure on the held-out side, write the version; returns its model.json."""
    run_ = common.start_run(args.seed, "cpu", args.threads)
    shared = Path(args.shared)
    sources, images = load_all(collect(shared), args.cache)
    val = np.array([held_out(s.group, args.seed) for s in sources])
    tr_src = [s for s, v in zip(sources, val, strict=True) if not v]
    va_src = [s for s, v in zip(sources, val, strict=True) if v]
    log.info("pictures: %d train, %d held out; %s", len(tr_src), len(va_src), Counter(s.kind for s in tr_src))
    out = Path(args.out) if args.out else settings.load().models_dir / "trained"
    version, vdir, epoch_log = common.new_version_dir(out, args.model_id or MODEL_ID, args.version)
    model = gate_train.train(
        images[~val], [s.kind for s in tr_src], epochs=args.epochs, seed=args.seed, log=epoch_log,
        **({"lr": args.lr} if args.lr else {}),
    )  # fmt: skip
    common.rounded_fp16(model)  # the figures are those of the weights written
    pics, kinds, rows = evaluation_set(va_src, images[val], args.seed)
    validation = figures(gate_train.probabilities(model, pics), kinds, rows, PASS_THRESHOLD)
    meta = common.base_meta(
        model_id=args.model_id or MODEL_ID, version=version, task="quality_gate", family="quality_gate_cnn",
        argv=args.argv, code=run_.code,
    ) | {
        "labels": list(CLASSES),
        "thresholds": {FRONTAL: PASS_THRESHOLD},
        "input_size": [gate_train.SIDE, gate_train.SIDE],
        "normalisation": f"the display picture in [0,1], area-resized to {gate_train.SIDE}x{gate_train.SIDE} "
        f"(aspect not kept); (x - {gate_train.MEAN}) / {gate_train.STD}",
        "mean": gate_train.MEAN,
        "std": gate_train.STD,
        "arch": {"width": 16, "side": gate_train.SIDE},
        "intended_use": "Research use only. Not for diagnosis or clinical decisions. Decides whether an image is "
        "a frontal (PA/AP) chest radiograph the other models can read; refuses laterals, CT slices, non-chest "
        "pictures, inverted grey scale, severe rotation and cropping. Passed when P(frontal) >= the threshold.",
        "source": "Small CNN trained from scratch by CXR Review (cxr-review train gate).",
        "data": {
            "description": __doc__.split("\n\n", 1)[1].split("\n\nGroups")[0].strip(),
            "n_train": len(tr_src),
            "n_held_out": len(va_src),
            "train_kinds": dict(Counter(s.kind for s in tr_src)),
            "held_out_kinds": dict(Counter(s.kind for s in va_src)),
            "split": f"by patient / source file, 30 % held out by sha256(seed {args.seed}:group)",
            "file_list_sha256": common.file_list_sha256(
                Path(s.path) for s in sources if not s.path.startswith("made:")
            ),
            "epochs": args.epochs,
        },
        "validation": validation,
    }  # fmt: skip
    meta = common.write_version(vdir, model, meta)
    log.info("held out: %s", validation)
    return meta | {"model_json": str(vdir / common.MODEL_JSON)}
