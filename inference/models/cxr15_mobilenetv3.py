"""15-class NIH ChestX-ray14 classifier: MobileNetV3-Small with BatchNorm folded into the conv biases."""

import torch
import torch.nn.functional as F
from torch import nn

from inference.types import RESEARCH_USE, ModelSpec

LABELS = (
    "No Finding", "Infiltration", "Atelectasis", "Effusion", "Nodule", "Pneumothorax", "Mass", "Consolidation",
    "Pleural_Thickening", "Cardiomegaly", "Emphysema", "Fibrosis", "Edema", "Pneumonia", "Hernia",
)  # fmt: skip

# Default operating points: per label, the softmax score maximising Youden's J (sensitivity + specificity - 1)
# over the 435 images of shared/data/nih (labels.csv, one-vs-rest; "No Finding" positive only for images
# labelled exactly that), rounded down to 3 significant figures. The model is overconfident, so most points
# are far below 0.5; many of those images were probably in its training set, so they are optimistic.
# tests/inference/test_models_quality.py recomputes them. An admin can override them per deployment.
THRESHOLDS = {
    "No Finding": 0.00425, "Infiltration": 0.000904, "Atelectasis": 0.00846, "Effusion": 0.00364,
    "Nodule": 0.00162, "Pneumothorax": 0.0155, "Mass": 2.1e-05, "Consolidation": 0.000179,
    "Pleural_Thickening": 0.000163, "Cardiomegaly": 0.00992, "Emphysema": 0.000238, "Fibrosis": 3.36e-05,
    "Edema": 5.1e-06, "Pneumonia": 1.79e-05, "Hernia": 5.78e-07,
}  # fmt: skip

SPEC = ModelSpec(
    model_id="cxr15_mobilenetv3",
    version="1.0.0",
    task="classification",
    labels=LABELS,
    input_size=(224, 224),
    normalisation="grayscale, bilinear (antialiased) resize to 224x224, (x/255 - 0.485) / 0.229",
    weights_file="cxr15_mobilenetv3small_nih_float_from_int8.pt",
    weights_sha256="0cdb24a96b813c2b0f3b4b06e632f31e6e497f4c57a259eca6d1c680ec7da751",
    intended_use=f"{RESEARCH_USE} A baseline triage demo: softmax scores from single-label training, "
    "overconfident, about 0.64 AUC on multi-finding images; Grad-CAM locates findings poorly.",
    source="MobileNetV3-Small trained on single-label NIH ChestX-ray14 images (random image split), int8 "
    "weights dequantised to float. No licence stated: research demo only.",
    mean=0.485,
    std=0.229,
    thresholds=THRESHOLDS,
)


def hswish(x: torch.Tensor) -> torch.Tensor:
    return x * F.relu6(x + 3) / 6


def hsigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3) / 6


class SE(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        return x * hsigmoid(self.fc2(F.relu(self.fc1(w))))


class Bneck(nn.Module):
    def __init__(self, k: int, cin: int, expand: int, cout: int, act, se: bool, stride: int):
        super().__init__()
        self.act, self.stride = act, stride
        self.conv1 = nn.Conv2d(cin, expand, 1)
        self.conv2 = nn.Conv2d(expand, expand, k, stride, k // 2, groups=expand)
        self.conv3 = nn.Conv2d(expand, cout, 1)
        self.se = SE(cout) if se else None
        if stride == 1 and cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        if self.se is not None:
            out = self.se(out)
        if self.stride == 1:
            out = out + (self.shortcut(x) if hasattr(self, "shortcut") else x)
        return out


_BLOCKS = (  # kernel, in, expand, out, activation, SE, stride
    (3, 16, 16, 16, F.relu, True, 2), (3, 16, 72, 24, F.relu, False, 2), (3, 24, 88, 24, F.relu, False, 1),
    (5, 24, 96, 40, hswish, True, 2), (5, 40, 240, 40, hswish, True, 1), (5, 40, 240, 40, hswish, True, 1),
    (5, 40, 120, 48, hswish, True, 1), (5, 48, 144, 48, hswish, True, 1), (5, 48, 288, 96, hswish, True, 2),
    (5, 96, 576, 96, hswish, True, 1), (5, 96, 576, 96, hswish, True, 1),
)  # fmt: skip


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes: int = len(LABELS)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.bneck = nn.Sequential(*(Bneck(*b) for b in _BLOCKS))
        self.conv2 = nn.Conv2d(96, 576, 1)
        self.linear3 = nn.Linear(576, 1280)
        self.bn3 = nn.BatchNorm1d(1280)
        self.linear4 = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 576, 7, 7) activation of the head's `conv2`: the Grad-CAM layer."""
        return hswish(self.conv2(self.bneck(hswish(self.conv1(x)))))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(feats, 1).flatten(1)
        return self.linear4(hswish(self.bn3(self.linear3(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build() -> nn.Module:
    return MobileNetV3Small()
