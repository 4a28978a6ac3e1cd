"""Stochastic weight averaging in the segmentation trainer: the BatchNorm statistics of the averaged weights
are recomputed from the training images (the averaged epochs' running statistics belong to other weights)."""

import numpy as np
import torch

from inference.training.segmentation import _recompute_batchnorm


class _Images:
    """Stands in for SegmentationData: fixed images, no augmentation."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx, rng=None, aug=None):
        x = torch.from_numpy(self.images[list(idx)])[:, None]
        return x, torch.zeros((len(idx), *self.images.shape[1:]), dtype=torch.int64)


def test_batchnorm_statistics_are_the_mean_over_one_pass_of_the_training_images():
    torch.manual_seed(0)
    images = np.random.default_rng(0).random((12, 16, 16), dtype=np.float32)
    conv, norm = torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3, momentum=0.1)
    model = torch.nn.Sequential(conv, norm)
    norm.running_mean.fill_(5.0)  # stale statistics, as after averaging weights
    norm.running_var.fill_(9.0)
    mean, std = 0.5, 0.25

    _recompute_batchnorm(model, _Images(images), mean, std, "cpu", 4, np.random.default_rng(1), None)

    order = np.random.default_rng(1).permutation(len(images))  # the pass visits the images in this order
    with torch.no_grad():
        y = conv((torch.from_numpy(images[order])[:, None] - mean) / std)
    batches = y.split(4)
    # a cumulative average over 3 batches: the mean of the batch means and of the unbiased batch variances
    torch.testing.assert_close(norm.running_mean, y.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    expected_var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(norm.running_var, expected_var, atol=1e-5, rtol=1e-5)
    assert norm.momentum == 0.1 and norm.num_batches_tracked.item() == 3
    assert model.training  # left in training mode, as the caller's loop expects before its own eval()
