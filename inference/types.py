"""Plain data shared by inference, viewer and the app. No torch import here: the viewer reads these types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Task = Literal["segmentation", "bone_suppression", "classification", "quality_gate"]

RESEARCH_USE = "Research use only. Not for diagnosis or clinical decisions."
ANATOMY_LABELS = ("background", "lungs", "heart", "clavicles")
SCORE_KINDS = {  # ClassificationResult.score_kind per ModelSpec.activation
    "softmax": "softmax (single-label training; sums to 1 over labels)",
    "sigmoid": "sigmoid (multi-label training; an independent probability per label)",
    "calibrated": "calibrated sigmoid (multi-label; Platt-scaled probabilities, fitted as the version's model.json records)",
}


class ModelUnavailable(Exception):
    """A model cannot be used (weights missing or changed). `reason` is what the UI shows."""

    def __init__(self, model_id: str, reason: str):
        super().__init__(f"{model_id}: {reason}")
        self.model_id = model_id
        self.reason = reason


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    version: str
    task: Task
    labels: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width) the network sees
    normalisation: str  # human-readable; `mean`/`std` below are what the runner applies to [0,1] pixels
    weights_file: str  # file name inside the models directory
    weights_sha256: str
    intended_use: str
    source: str  # provenance and licence of the weights
    mean: float = 0.0
    std: float = 1.0
    # Default operating point per label (classification only); editable by an admin, stored beside results.
    thresholds: dict[str, float] = field(default_factory=dict)
    # Classification scores: "softmax" (single-label training, scores sum to 1) or "sigmoid" (multi-label,
    # an independent probability per label).
    activation: Literal["softmax", "sigmoid"] = "softmax"
    # Trained versions (model.json under <root>/<model_id>/<version>/): the inference/models module declaring
    # FAMILY that builds the network, its builder arguments (encoder, classes, ...), the folder holding
    # model.json and the weights, when it was made (ISO-8601 UTC), its validation metrics and the whole
    # model.json. Built-in specs leave these empty: their weights live in the models directory.
    family: str = ""
    arch: dict = field(default_factory=dict)
    directory: str = ""
    created: str = ""
    metrics: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    # Parts of a trained version the runner applies (checked when model.json is read): percentiles stretched
    # to 0..1 before the network, the zoom/shift views averaged at inference, and Platt calibration
    # {"slope": a, "intercepts": {label: b}} of the logits, or {"slopes": {label: a}, ...}, one slope per label.
    contrast_stretch: tuple[float, float] | None = None
    test_time_views: tuple[dict, ...] = ()
    calibration: dict | None = None

    @property
    def ref(self) -> str:
        """ "model_id@version", the string `Registry.resolve` and `cxr-review --model` take."""
        return f"{self.model_id}@{self.version}"

    def provenance(self) -> dict:
        """{"id", "version", "weights_sha256"}: how stored results and reports name the model."""
        return {"id": self.model_id, "version": self.version, "weights_sha256": self.weights_sha256}

    @property
    def score_kind(self) -> str:
        """Key of SCORE_KINDS: "calibrated" when model.json carries a calibration, else the activation."""
        return "calibrated" if self.calibration else self.activation

    @property
    def builtin(self) -> bool:
        """Defined by a module in inference/models (weights in the models directory), not by a model.json."""
        return not self.directory


@dataclass(frozen=True)
class ModelRef:
    """Provenance carried by every prediction and every row derived from it."""

    model_id: str
    version: str
    weights_sha256: str

    @property
    def ref(self) -> str:
        return f"{self.model_id}@{self.version}"


@dataclass(frozen=True)
class AnatomyResult:
    label_map: np.ndarray  # uint8 HxW at input resolution, values index ANATOMY_LABELS
    model: ModelRef
    timings_ms: dict[str, float]
    labels: tuple[str, ...] = ANATOMY_LABELS


@dataclass(frozen=True)
class BoneResult:
    soft_tissue: np.ndarray  # float32 HxW in [0,1] at input resolution
    model: ModelRef
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class ClassificationResult:
    # `score_kind` says what the scores are: softmax over all labels for single-label models (the values sum
    # to 1 across labels and are *not* independent per-finding probabilities), or a sigmoid per label for
    # multi-label models.
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    positive: dict[str, bool]  # probability >= threshold
    model: ModelRef
    timings_ms: dict[str, float]
    score_kind: str = "softmax (single-label training; sums to 1 over labels)"  # == SCORE_KINDS["softmax"]

    @property
    def top_label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)


@dataclass(frozen=True)
class GateResult:
    """The quality gate's verdict: passed, and when not, the reasons a reader reads."""

    passed: bool
    reasons: list[str]
    probabilities: dict[str, float]
    model: ModelRef
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class CtrResult:
    """Cardiothoracic ratio with both measurement lines (row y, inclusive x-extent) for drawing."""

    ratio: float
    heart_row: int
    heart_x0: int
    heart_x1: int
    thorax_row: int
    thorax_x0: int
    thorax_x1: int

    @property
    def heart_width(self) -> int:
        return self.heart_x1 - self.heart_x0 + 1

    @property
    def thorax_width(self) -> int:
        return self.thorax_x1 - self.thorax_x0 + 1


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int
    score: float
