"""The segmentation trainer's soft Dice loss against hand-computed values (smoothing 1)."""

import pytest
import torch

from inference.training.segmentation import soft_dice_loss


def test_soft_dice_over_the_batch_and_per_image():
    # Two 2x2 images, 2 classes. Image A: one target pixel of class 1, predicted exactly. Image B: three target
    # pixels of class 1, none predicted.
    target = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 0]]])
    predicted = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    logits = torch.nn.functional.one_hot(predicted, 2).permute(0, 3, 1, 2).float() * 40 - 20
    # Batch: intersection 1, predicted 1 + target 4 -> (2*1 + 1) / (5 + 1) = 0.5.
    assert soft_dice_loss(logits, target, [1]).item() == pytest.approx(0.5, abs=1e-6)
    # Per image: A (2 + 1) / (2 + 1) = 1, B (0 + 1) / (3 + 1) = 0.25; loss 1 - mean = 0.375.
    assert soft_dice_loss(logits, target, [1], per_image=True).item() == pytest.approx(0.375, abs=1e-6)
    # Both classes, per image: background A (2*3 + 1) / (6 + 1) = 1, B (2*1 + 1) / (4 + 1 + 1) = 0.5.
    both = 1 - (1 + 0.5 + 1 + 0.25) / 4
    assert soft_dice_loss(logits, target, [0, 1], per_image=True).item() == pytest.approx(both, abs=1e-6)
