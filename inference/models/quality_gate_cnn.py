"""Quality gate: is the image a frontal (PA/AP) chest radiograph the other models can read? A small CNN on the
64x64 picture the models see, one class per kind of image the gate refuses. Trained by
inference/training/gate.py; versions live in assets/models/quality_gate/<version>/ (model.json + weights)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

FAMILY = "quality_gate_cnn"
SIDE = 64
FRONTAL = "frontal"
# Output classes, in the network's order; every one but FRONTAL is a reason to refuse.
CLASSES = ("frontal", "lateral", "ct", "not_chest", "inverted", "rotated", "cropped")
REASONS = {
    "lateral": "lateral view: the models read frontal (PA/AP) films only",
    "ct": "a CT slice, not a radiograph",
    "not_chest": "not a chest radiograph (a photograph, a drawing, another body part or modality)",
    "inverted": "inverted grey scale (bright air, dark bone)",
    "rotated": "rotated or upside down",
    "cropped": "severely cropped: the chest is not wholly in the image",
}
SECOND_REASON = 0.25  # a further refusing class is named when its probability reaches this


def gate_input(img: np.ndarray, side: int = SIDE) -> np.ndarray:
    """The network's view of a display image (float in [0,1], any size): area-resized to side x side
    (aspect not kept: a cropped film keeps the proportions that give it away), float32."""
    return cv2.resize(np.asarray(img, np.float32), (side, side), interpolation=cv2.INTER_AREA)


class GateNet(nn.Module):
    """Four stride-2 conv blocks (64 -> 4 px) and a linear layer on the flattened 4x4 map, which keeps where
    things are: what tells a rotated or cropped film from an upright whole one."""

    def __init__(self, width: int = 16, classes: int = len(CLASSES), side: int = SIDE):
        super().__init__()
        chans = (1, width, 2 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, chans[1:], strict=False):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(chans[-1] * (side // 16) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x).flatten(1)))


def build(spec) -> nn.Module:
    arch = spec.arch or {}
    return GateNet(int(arch.get("width", 16)), len(spec.labels), int(arch.get("side", SIDE)))


def verdict(probabilities: dict[str, float], pass_threshold: float) -> tuple[bool, list[str]]:
    """(passed, reasons): passed when the frontal class reaches the threshold; else the most likely refusing
    class's reason, then any other refusing class at SECOND_REASON or more."""
    if probabilities.get(FRONTAL, 0.0) >= pass_threshold:
        return True, []
    others = sorted((p, c) for c, p in probabilities.items() if c != FRONTAL)[::-1]
    named = [c for i, (p, c) in enumerate(others) if i == 0 or p >= SECOND_REASON]
    return False, [REASONS.get(c, c) for c in named]
