"""Anatomy segmentation family trained by this project: a segmentation_models_pytorch U-Net, 4 classes
(background, lungs, heart, clavicles), one grayscale input channel. Versions are model.json folders (see
inference/registry.py); `spec.arch` holds the smp arguments (encoder, decoder channels)."""

from __future__ import annotations

from torch import nn

from inference.types import ANATOMY_LABELS, ModelSpec

FAMILY = "anatomy_unet_smp"
DEFAULT_ARCH = {
    "encoder_name": "resnet18",
    "encoder_depth": 5,
    "decoder_channels": [128, 64, 32, 16, 16],
    "in_channels": 1,
    "classes": len(ANATOMY_LABELS),
}


def make(arch: dict | None = None) -> nn.Module:
    """An untrained smp.Unet; never downloads encoder weights (encoder_weights=None)."""
    import segmentation_models_pytorch as smp  # imported here: smp pulls in timm, which takes seconds

    a = {**DEFAULT_ARCH, **(arch or {})}
    return smp.Unet(
        encoder_name=a["encoder_name"],
        encoder_depth=int(a["encoder_depth"]),
        encoder_weights=None,
        decoder_channels=list(a["decoder_channels"]),
        in_channels=int(a["in_channels"]),
        classes=int(a["classes"]),
    )


def build(spec: ModelSpec) -> nn.Module:
    return make(spec.arch)
