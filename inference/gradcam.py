"""Grad-CAM (Selvaraju et al. 2017) for classifiers that expose `features(x)` and `head(features)`."""

import torch
import torch.nn.functional as F


def grad_cam(model: torch.nn.Module, x: torch.Tensor, class_index: int | None = None) -> tuple[torch.Tensor, int]:
    """Class activation map at feature resolution (h, w), scaled to [0,1], and the class it explains.

    `class_index=None` explains the top class. Only the head needs gradients, so the backbone runs without
    autograd bookkeeping; the explained score is the class logit (pre-softmax), as in the paper.
    """
    with torch.no_grad():
        feats = model.features(x)
    feats.requires_grad_(True)
    with torch.enable_grad():
        logits = model.head(feats)[0]
        if class_index is None:
            class_index = int(logits.argmax())
        (grads,) = torch.autograd.grad(logits[class_index], feats)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients per channel
    cam = F.relu((weights * feats.detach()).sum(dim=1))[0]
    peak = cam.max()
    return (cam / peak if peak > 0 else cam), class_index
