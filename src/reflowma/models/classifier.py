"""A LeNet-like image classifier whose penultimate layer is the feature space of
``fd_classifier`` (the Fréchet distance between sample sets; see ``evaluation.frechet``).

Two 5x5 convolutions (padding 2, ReLU, 2x2 max pooling) and two linear layers:
``[B, C, H, W] -> conv(C, c1) -> pool -> conv(c1, c2) -> pool -> flatten -> linear(features)
-> ReLU -> linear(n_classes)``. ``features(x)`` is the ReLU output before the last layer.
Sizes: 1x28x28 (MNIST: 7x7 after pooling), 1x8x8 (digits as images: 2x2), 3x32x32 (CIFAR-10:
8x8); any H, W >= 4. Not a velocity network: it is not in ``MODELS``.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet(nn.Module):
    def __init__(self, image_shape, n_classes: int, channels=(16, 32), features: int = 64):
        super().__init__()
        C, H, W = (int(s) for s in image_shape)
        if H < 4 or W < 4:
            raise ValueError(f"LeNet needs images of at least 4x4, got {H}x{W}")
        c1, c2 = (int(c) for c in channels)
        self.image_shape, self.n_classes = (C, H, W), int(n_classes)
        self.body = nn.Sequential(
            nn.Conv2d(C, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * (H // 4) * (W // 4), int(features)), nn.ReLU())
        self.head = nn.Linear(int(features), self.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``[B, features]`` of images ``[B, C, H, W]`` in [-1, 1]."""
        return self.body(x.reshape(x.shape[0], *self.image_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, n_classes]``."""
        return self.head(self.features(x))


def build(image_shape, n_classes: int, cfg: dict) -> LeNet:
    """From the classifier stage's ``net`` section (``channels``, ``features``)."""
    return LeNet(image_shape, n_classes, tuple(cfg.get("channels", (16, 32))),
                 int(cfg.get("features", 64)))
