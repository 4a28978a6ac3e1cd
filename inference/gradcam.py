"""Grad-CAM (Selvaraju et al. 2017) for classifiers that expose `features(x)` and `head(features)`."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def grad_cam(model: torch.nn.Module, x: torch.Tensor, class_indices: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Class activation maps (K, h, w) at feature resolution, each scaled to [0,1], and the classes explained.

    The backbone runs once and without autograd bookkeeping; only the head is differentiated, once per class.
    The explained score is the class logit (pre-softmax). (Which class is "the top one" depends on the version's
    calibration: Runner.gradcam decides it from the probabilities.)
    """
    with torch.no_grad():
        feats = model.features(x)
    feats.requires_grad_(True)
    cams = []
    with torch.enable_grad():
        logits = model.head(feats)[0]
        indices = list(class_indices)
        for i in indices:
            (grads,) = torch.autograd.grad(logits[i], feats, retain_graph=True)
            weights = grads.mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients per channel
            cam = F.relu((weights * feats.detach()).sum(dim=1))[0]
            peak = cam.max()
            cams.append(cam / peak if peak > 0 else cam)
    return torch.stack(cams), indices
