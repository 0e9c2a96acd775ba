"""A randomly initialised feature network, for tests only.

Numbers from it check the pipeline, nothing else: the backend refuses to build unless
``BARLAB_ALLOW_RANDOM_FEATURES=1`` is set (the test suite sets it), and its label says so.
"""

from __future__ import annotations

import os

import torch
from einops import reduce
from torch import nn

from barlab.errors import ConfigError
from barlab.metrics.feature_net import FeatureNet, Features, as_rgb

ENV_FLAG = "BARLAB_ALLOW_RANDOM_FEATURES"


class RandomFeatures(FeatureNet):
    """uint8 (N, 1|3, H, W) → random conv features (N, num_features) and logits (N, num_classes)."""

    backend = "random"
    label = "RANDOM features (tests only; meaningless as a metric)"
    comparable = False

    def __init__(self, num_features: int = 32, num_classes: int = 10, seed: int = 0):
        super().__init__()
        if os.environ.get(ENV_FLAG) != "1":
            raise ConfigError("", "random features are for tests only", fix="backend=classifier (or inception)")
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, num_features, 3, stride=2, padding=1)
        self.fc = nn.Linear(num_features, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        self.num_features, self.num_classes = num_features, num_classes
        self.name = f"random-{num_features}-seed{seed}"

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> Features:
        x = as_rgb(images).to(self.fc.weight.device, torch.float32) / 127.5 - 1.0
        feats = reduce(torch.tanh(self.conv(x)), "n c h w -> n c", "mean")
        return Features(features=feats, logits=self.fc(feats))
