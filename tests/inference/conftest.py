"""Real weights from $CXR_REVIEW_MODELS_DIR (default <repo>/../shared/models) and real data from
$CXR_REVIEW_SHARED_DIR/data (default <repo>/../shared/data); tests skip with the reason when either is absent."""

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.registry import Registry
from inference.runner import Runner

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = Path(os.environ.get("CXR_REVIEW_MODELS_DIR", REPO.parent / "shared" / "models"))
SHARED_DIR = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", REPO.parent / "shared"))
WEIGHTS = (
    "anatomy_unet_hybridgnet_jsrt_4class.pt",
    "bone_suppression_kalisz_ae_torch.pt",
    "cxr15_mobilenetv3small_nih_float_from_int8.pt",
)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    missing = [w for w in WEIGHTS if not (MODELS_DIR / w).is_file()]
    if missing:
        pytest.skip(f"model weights {missing} not in {MODELS_DIR} (set CXR_REVIEW_MODELS_DIR)")
    return MODELS_DIR


@pytest.fixture(scope="session")
def registry(models_dir) -> Registry:
    return Registry(models_dir)


@pytest.fixture(scope="session")
def runner(registry) -> Runner:
    return Runner(registry, "cpu")


@pytest.fixture(scope="session")
def dataset():
    """dataset("jsrt") -> the folder, or skip when the shared data is absent."""

    def find(name: str) -> Path:
        path = SHARED_DIR / "data" / name
        if not path.is_dir():
            pytest.skip(f"shared data folder {path} absent (set CXR_REVIEW_SHARED_DIR)")
        return path

    return find


def _read_gray(path: Path) -> np.ndarray:
    """8-bit grayscale file -> float32 HxW in [0,1], as the viewer hands images to the runner."""
    u8 = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert u8 is not None, f"cannot read {path}"
    return u8.astype(np.float32) / 255


@pytest.fixture(scope="session")
def read_gray():
    return _read_gray


@pytest.fixture(scope="session")
def nih_no_finding_pa(dataset) -> list[np.ndarray]:
    """The first five PA images labelled exactly "No Finding", in labels.csv order."""
    nih = dataset("nih")
    with open(nih / "labels.csv", newline="") as f:
        rows = [
            r for r in csv.DictReader(f) if r["Finding Labels"] == "No Finding" and r["View Position"] == "PA"
        ]
    return [_read_gray(nih / "images" / r["Image Index"]) for r in rows[:5]]
