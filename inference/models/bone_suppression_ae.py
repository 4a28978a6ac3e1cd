"""Bone suppression: Kalisz-style convolutional autoencoder producing a soft-tissue image."""

import torch
import torch.nn.functional as F
from torch import nn

from inference.types import RESEARCH_USE, ModelSpec

SPEC = ModelSpec(
    model_id="bone_suppression_ae",
    version="1.0.0",
    task="bone_suppression",
    labels=("soft_tissue",),
    input_size=(512, 512),
    normalisation="grayscale in [0,1], standard polarity; resized (stretched) to 512x512",
    weights_file="bone_suppression_kalisz_ae_torch.pt",
    weights_sha256="27a7beddfaf0f3b051eb9813f343f4eb261818a8e26f1fddd56844b6af0a53a3",
    intended_use=f"{RESEARCH_USE} A visual aid that attenuates ribs and clavicles; the output is blurred "
    "relative to the input and must not be read as a dual-energy image.",
    source="Convolutional autoencoder after Kalisz et al., weights ported from the xU-NetFullSharp repository "
    "(JSRT + dual-energy pairs). Licence MIT.",
)


class BoneSuppressionAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1 = nn.Conv2d(1, 32, 4)
        self.e2 = nn.Conv2d(32, 32, 4, stride=2, padding=1)
        self.e3 = nn.Conv2d(32, 48, 4, stride=2, padding=1)
        self.e4 = nn.Conv2d(48, 48, 4, stride=2, padding=1)
        self.d1 = nn.ConvTranspose2d(48, 48, 4, stride=2, padding=1)
        self.d2 = nn.ConvTranspose2d(48, 48, 4, stride=2, padding=1)
        self.d3 = nn.ConvTranspose2d(48, 32, 4, stride=2, padding=1)
        self.d4 = nn.ConvTranspose2d(32, 32, 4)
        self.out = nn.Conv2d(32, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.e1(F.pad(x, (1, 2, 1, 2))))  # TensorFlow "same" padding for an even kernel
        for layer in (self.e2, self.e3, self.e4, self.d1, self.d2, self.d3):
            x = F.relu(layer(x))
        x = F.relu(self.d4(x))[..., 1:-2, 1:-2]  # undo the "same" growth of the stride-1 transpose
        return torch.sigmoid(self.out(x))


def build() -> nn.Module:
    # channels_last makes oneDNN's CPU convolutions ~1.6x faster for this wide-image, few-channel network;
    # load_state_dict copies into the parameters and keeps their layout.
    return BoneSuppressionAE().to(memory_format=torch.channels_last)
