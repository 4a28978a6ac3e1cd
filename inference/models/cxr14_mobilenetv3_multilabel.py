"""Multi-label NIH ChestX-ray14 classifier family trained by this project: the shipped MobileNetV3-Small
(cxr15_mobilenetv3 layout) with one sigmoid per finding. Versions are model.json folders (see
inference/registry.py); `spec.arch["head"]` picks the head:

- "logsoftmax" (default): the shipped 15-logit head is kept and finding k scores
  log_softmax(z)_k + b_k. Started from the shipped weights (b = 0), each finding's score ranks images exactly as
  the shipped softmax does, so fine-tuning starts from the baseline instead of below it.
- "linear": a plain 14-output linear layer.
- "pooled_linear": one linear layer on the pooled 576-d `conv2` features (the Grad-CAM layer), nothing between;
  what distillation fits on a frozen backbone (inference/training/distillation.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inference.models.cxr15_mobilenetv3 import LABELS as CXR15_LABELS
from inference.models.cxr15_mobilenetv3 import MobileNetV3Small
from inference.types import ModelSpec

FAMILY = "cxr14_mobilenetv3_multilabel"
FINDINGS = tuple(label for label in CXR15_LABELS if label != "No Finding")  # the 14 NIH findings


class LogSoftmaxMultiLabel(nn.Module):
    """Finding logits log_softmax(z)[k] + b_k over the 15 single-label logits z of a MobileNetV3Small."""

    def __init__(self, labels: tuple[str, ...] = FINDINGS):
        super().__init__()
        self.base = MobileNetV3Small(num_classes=len(CXR15_LABELS))
        self.register_buffer(
            "keep", torch.tensor([CXR15_LABELS.index(label) for label in labels]), persistent=False
        )
        self.bias = nn.Parameter(torch.zeros(len(labels)))

    def features(self, x: torch.Tensor) -> torch.Tensor:  # the Grad-CAM layer, as in the shipped model
        return self.base.features(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.base.head(feats), dim=1)[:, self.keep] + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def head_parameters(self) -> list[nn.Parameter]:
        b = self.base
        return [*b.linear3.parameters(), *b.bn3.parameters(), *b.linear4.parameters(), self.bias]


class LinearMultiLabel(MobileNetV3Small):
    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.linear3.parameters(), *self.bn3.parameters(), *self.linear4.parameters()]


class PooledLinearMultiLabel(nn.Module):
    def __init__(self, num_labels: int = len(FINDINGS)):
        super().__init__()
        self.base = MobileNetV3Small(num_classes=len(CXR15_LABELS))
        del self.base.linear3, self.base.bn3, self.base.linear4  # unused: the head is `fc` alone
        self.fc = nn.Linear(576, num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.features(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(feats, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.fc.parameters())


def make(num_labels: int = len(FINDINGS), head: str = "logsoftmax") -> nn.Module:
    if head == "logsoftmax":
        if num_labels != len(FINDINGS):
            raise ValueError("the logsoftmax head scores the 14 NIH findings")
        return LogSoftmaxMultiLabel()
    if head == "linear":
        return LinearMultiLabel(num_classes=num_labels)
    if head == "pooled_linear":
        return PooledLinearMultiLabel(num_labels)
    raise ValueError(f"unknown head {head!r}: logsoftmax, linear or pooled_linear")


def build(spec: ModelSpec) -> nn.Module:
    return make(len(spec.labels), spec.arch.get("head", "logsoftmax"))


def shipped_problem(spec: ModelSpec) -> str | None:
    """Why a version cannot run the shipped weights as they are (model.json `"weights_of"`), or None."""
    if spec.arch.get("head", "logsoftmax") != "logsoftmax" or tuple(spec.labels) != FINDINGS:
        return "a version on the shipped weights needs the logsoftmax head and the 14 findings in their order"
    return None


def from_shipped(state: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The state_dict of a version that runs the shipped 15-class weights as they are (model.json
    `"weights_of"`): its logsoftmax head with zero biases, so that its logits are the shipped model's log
    softmax shares and only its calibration and thresholds are its own."""
    if why := shipped_problem(spec):
        raise ValueError(why)
    return {f"base.{k}": v for k, v in state.items()} | {"bias": torch.zeros(len(FINDINGS))}


def from_single_label(state: dict[str, torch.Tensor], head: str = "logsoftmax") -> nn.Module:
    """The multi-label network initialised from the shipped 15-class softmax weights.

    logsoftmax: the whole shipped network is kept, biases 0 (scores rank images as the shipped softmax does).
    linear: backbone copied; head row k = (w_k - w_NoFinding, b_k - b_NoFinding), so that sigmoid of finding k
    is p_k / (p_k + p_NoFinding).
    """
    model = make(len(FINDINGS), head)
    if head == "logsoftmax":
        model.base.load_state_dict(state, strict=True)
        return model
    own = {k: v for k, v in state.items() if not k.startswith("linear4.")}
    missing, unexpected = model.load_state_dict(own, strict=False)
    assert set(missing) == {"linear4.weight", "linear4.bias"} and not unexpected, (missing, unexpected)
    nf = CXR15_LABELS.index("No Finding")
    rows = [CXR15_LABELS.index(label) for label in FINDINGS]
    with torch.no_grad():
        model.linear4.weight.copy_(state["linear4.weight"][rows] - state["linear4.weight"][nf])
        model.linear4.bias.copy_(state["linear4.bias"][rows] - state["linear4.bias"][nf])
    return model
