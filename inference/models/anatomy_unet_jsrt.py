"""Anatomy segmentation (lungs, heart, clavicles): the residual U-Net shipped with HybridGNet, trained on JSRT/SCR."""

import torch
import torch.nn.functional as F
from torch import nn

from inference.types import ANATOMY_LABELS, RESEARCH_USE, ModelSpec

SPEC = ModelSpec(
    model_id="anatomy_unet_jsrt",
    version="1.0.0",
    task="segmentation",
    labels=ANATOMY_LABELS,
    input_size=(512, 512),
    normalisation="grayscale in [0,1], standard polarity; zero-padded to square, resized to 512x512",
    weights_file="anatomy_unet_hybridgnet_jsrt_4class.pt",
    weights_sha256="1fa71d35208b33b575ff0ffc4363c58ff599f69c5182d1bb7ddb2855c8c1b3ab",
    intended_use=f"{RESEARCH_USE} Lungs/heart/clavicles outlines on frontal (PA) chest radiographs; trained on "
    "the 247 JSRT images, so expect weaker outlines on AP, paediatric or post-surgical studies.",
    source="Residual U-Net baseline of the HybridGNet repository (ngaggion/HybridGNet), JSRT + SCR masks. "
    "Licence GPL-3.0.",
)


def _bn(c: int) -> nn.BatchNorm2d:
    # The checkpoint has no running statistics: the network always normalises with the batch's own statistics,
    # which is why the runner feeds one image per forward pass.
    return nn.BatchNorm2d(c, track_running_stats=False)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn(cout)) if cin != cout else nn.Identity()
        )
        self.block = nn.Sequential(
            _bn(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, padding=1),
            _bn(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.block(x) + self.skip(x))


class AnatomyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.dconv_down1 = ResBlock(1, 8)
        self.dconv_down2 = ResBlock(8, 16)
        self.dconv_down3 = ResBlock(16, 32)
        self.dconv_down4 = ResBlock(32, 64)
        self.bottleneck = ResBlock(64, 64)
        self.dconv_up4 = ResBlock(128, 64)
        self.dconv_up3 = ResBlock(96, 32)
        self.dconv_up2 = ResBlock(48, 16)
        self.dconv_up1 = ResBlock(24, 8)
        self.conv_last = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in (self.dconv_down1, self.dconv_down2, self.dconv_down3, self.dconv_down4):
            x = down(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, skip in zip(
            (self.dconv_up4, self.dconv_up3, self.dconv_up2, self.dconv_up1), reversed(skips), strict=True
        ):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = up(torch.cat([x, skip], dim=1))
        return self.conv_last(x)  # (N, 4, H, W) logits


def build() -> nn.Module:
    # channels_last makes oneDNN's CPU convolutions ~1.6x faster for this wide-image, few-channel network;
    # load_state_dict copies into the parameters and keeps their layout.
    return AnatomyUNet().to(memory_format=torch.channels_last)
