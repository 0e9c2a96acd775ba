"""The official BAR Gram (style) loss on a frozen torchvision VGG16, loaded from a local file.

State-dict keys of :class:`GramLoss`: ``features.{0,2,5,...,28}.{weight,bias}`` (all 31 modules of
``vgg16().features`` are kept; the ImageNet constants are non-persistent buffers).
"""

from __future__ import annotations

import os

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from barlab.tokenizer.perceptual import IMAGENET_MEAN, IMAGENET_STD, vgg16_features_from_file
from barlab.tokenizer.pretrained import freeze, gray_to_rgb
from barlab.utils.integers import check_int


def gram_matrix(features: Tensor) -> Tensor:
    """features (N, C, H, W) -> Gram matrices F F^T / (C H W), (N, C, C), with F = features as (N, C, H*W)."""
    _, c, h, w = features.shape
    flat = rearrange(features, "n c h w -> n c (h w)")
    return flat @ flat.transpose(1, 2) / (c * h * w)


class GramLoss(nn.Module):
    """Frozen VGG16 Gram loss: x, y (B, C, H, W) in [-1, 1], C in {1, 3} -> scalar.

    As the official ``GramLoss``: both images are resized to 224 (bilinear, align_corners False, no
    antialias), mapped to [0, 1] and ImageNet-normalised, then run through all 31 modules of
    ``vgg16().features``; every module's output contributes ``((G(x) - G(y))^2).mean()``.

    The official quirk, reproduced exactly: torchvision's ReLUs are in place, so the tensor the official
    loop records after each conv is overwritten by the following ReLU. Each conv's entry therefore equals
    its ReLU output: the loss counts every post-ReLU Gram term twice (13 x 2), every max-pool output once
    (5), and no pre-activation at all. Here the ReLU term is simply added twice.

    Gray input is repeated to 3 channels. Frozen (requires_grad False, always eval); gradients flow to the
    inputs.

    Args:
        vgg_path: torchvision VGG16 state dict (``vgg16-397923af.pth``, or features-only).
        resize: side both images are resized to (224).
    """

    def __init__(self, vgg_path: str | os.PathLike | None, resize: int = 224):
        super().__init__()
        self.resize = check_int(resize, "resize", fix="resize=224")
        self.features = vgg16_features_from_file(vgg_path, "vgg_path", user="the Gram loss", fix="vgg_path=<that file>")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        freeze(self)

    def train(self, mode: bool = True) -> GramLoss:
        """Always stays in eval mode (the network is frozen)."""
        return super().train(False)

    def _prepare(self, x: Tensor) -> Tensor:
        x = F.interpolate(gray_to_rgb(x, "GramLoss"), size=(self.resize, self.resize), mode="bilinear",
                          align_corners=False)
        return ((x + 1.0) / 2.0 - self.mean) / self.std

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y (B, C, H, W) in [-1, 1] -> scalar Gram loss (sum over the 31 official entries)."""
        hx, hy = self._prepare(x), self._prepare(y)
        total = x.new_zeros((), dtype=torch.float32)
        for layer in self.features:
            hx, hy = layer(hx), layer(hy)
            if isinstance(layer, nn.Conv2d):
                continue  # its official entry is the ReLU output: counted with the ReLU below
            term = ((gram_matrix(hx) - gram_matrix(hy)) ** 2).mean()
            total = total + term
            if isinstance(layer, nn.ReLU):
                total = total + term  # the conv entry, overwritten in place by this ReLU officially
        return total
