"""barlab's domain classifier: a small CNN trained on the dataset itself.

It serves two purposes on datasets far from ImageNet (Fashion-MNIST's 28×28 garments):

- **features** for FID/KID/precision-recall (the pooled 128-d layer), labelled
  ``classifier`` everywhere: these numbers are *not* comparable to Inception FIDs;
- **class accuracy** of class-conditional samples (the share of samples the classifier assigns
  to the class they were generated for) and an Inception-Score-style score from its logits.

``SmallCNN`` is a plain module on float images in [-1, 1]; ``ClassifierFeatures`` wraps a trained
checkpoint (written by :mod:`barlab.metrics.classifier_training`) as a :class:`FeatureNet`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from barlab.errors import CheckpointError
from barlab.metrics.feature_net import FeatureNet, Features, as_gray

FORMAT = "barlab.classifier/1"


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.GELU())


class SmallCNN(nn.Module):
    """A strided 3×3 stem (width w), then 3×3 convs of width 2w, 4w, 4w with one 2× pooling,
    global average pooling and a linear classifier: about 0.2M parameters at w = 32.

    in_channels: 1 or 3. image_size: training side (inputs are resized to it).
    forward: x (N, C, H, W) float in [-1, 1] → (features (N, 4w), logits (N, num_classes)).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: int = 32,
                 dropout: float = 0.1):
        super().__init__()
        self.in_channels, self.num_classes, self.width, self.image_size = in_channels, num_classes, width, image_size
        w = width
        self.stages = nn.Sequential(
            conv_block(in_channels, w, stride=2), conv_block(w, 2 * w), nn.MaxPool2d(2),
            conv_block(2 * w, 4 * w), conv_block(4 * w, 4 * w),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * w, num_classes)
        self.num_features = 4 * w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = reduce(self.stages(x), "n c h w -> n c", "mean")
        return feats, self.fc(self.dropout(feats))


class ClassifierFeatures(FeatureNet):
    """A trained :class:`SmallCNN` as a feature network: uint8 images → (features, logits)."""

    backend = "classifier"
    comparable = False

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"classifier checkpoint {path} does not exist; train one with "
                                  "`python -m barlab.train stage=classifier` (it is also trained on first use)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise CheckpointError(f"cannot read classifier checkpoint {path}: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a barlab classifier file (expected format {FORMAT})")
        self.net = SmallCNN(**payload["config"])
        self.net.load_state_dict(payload["state_dict"])
        self.net.eval().requires_grad_(False)
        self.path = path
        self.val_accuracy = payload.get("val_accuracy")
        self.name = f"classifier-{payload['id']}"
        self.label = (f"barlab classifier features ({payload.get('dataset', 'dataset')}; "
                      "not comparable to Inception FID)")
        self.num_features = self.net.num_features
        self.num_classes = self.net.num_classes

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # always an evaluator
        return self

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> Features:
        device = self.net.fc.weight.device
        x = images.to(device, torch.float32) / 127.5 - 1.0
        if self.net.in_channels == 1:
            x = as_gray(x)
        elif x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.net.image_size or x.shape[-2] != self.net.image_size:
            x = F.interpolate(x, size=(self.net.image_size,) * 2, mode="bilinear", align_corners=False,
                              antialias=True)
        feats, logits = self.net(x)
        return Features(features=feats.float(), logits=logits.float())
