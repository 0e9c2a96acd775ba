"""The official BAR perceptual loss ``PerceptualLoss("lpips-convnext_s-1.0-0.1")``: LPIPS + ConvNeXt-S logits.

``(w_l * mean_b LPIPS(x, y) + w_c * MSE(convnext(prep(x)), convnext(prep(y)))) / (w_l + w_c)``, with
``prep`` = bicubic resize to 224 (align_corners False, antialias True), [-1, 1] -> [0, 1], ImageNet mean/std.
LPIPS sees the images at their own size. Nothing is downloaded: three local files (see :class:`LPIPS` and
:func:`load_convnext`).

State-dict keys: ``lpips.features.N.*``, ``lpips.lin{0..4}.model.1.weight`` and ``convnext.features.*``,
``convnext.classifier.*`` (a part that is off is absent).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from barlab.errors import ConfigError
from barlab.tokenizer.convnext import CONVNEXT_SMALL_DEPTHS, CONVNEXT_SMALL_DIMS, ConvNeXt, load_convnext
from barlab.tokenizer.losses import check_weight
from barlab.tokenizer.lpips import LPIPS
from barlab.tokenizer.perceptual import IMAGENET_MEAN, IMAGENET_STD
from barlab.tokenizer.pretrained import freeze, gray_to_rgb
from barlab.utils.integers import check_int


class PaperPerceptualLoss(nn.Module):
    """Frozen LPIPS + ConvNeXt-S perceptual loss: x, y (B, C, H, W) in [-1, 1], C in {1, 3} -> scalar.

    loss = (lpips_weight * LPIPS(x, y).mean() + convnext_weight * MSE(logits(x), logits(y)))
    / (lpips_weight + convnext_weight), where logits are ConvNeXt-S's 1000 ImageNet logits of the image
    resized to 224 (bicubic, antialias), mapped to [0, 1] and ImageNet-normalised. A part whose weight is 0
    is not built and needs no file; with one part the loss is that part alone. Gray input is repeated
    to 3 channels. Frozen (requires_grad False, always eval); gradients flow to the inputs.

    Args:
        lpips_vgg_path: torchvision VGG16 state dict for LPIPS (``vgg16-397923af.pth``).
        lpips_path: LPIPS linear layers (``vgg_lpips.pth`` / richzhang ``vgg.pth``).
        convnext_path: torchvision ``convnext_small-0c510722.pth``.
        lpips_weight, convnext_weight: the official 1.0 and 0.1; not both 0.
        convnext_dims, convnext_depths: ConvNeXt size (ConvNeXt-S by default; tiny ones for tests).
        resize: side the ConvNeXt input is resized to (224).
    """

    def __init__(self, lpips_vgg_path: str | os.PathLike | None = None, lpips_path: str | os.PathLike | None = None,
                 convnext_path: str | os.PathLike | None = None, *, lpips_weight: float = 1.0,
                 convnext_weight: float = 0.1, convnext_dims: tuple[int, ...] = CONVNEXT_SMALL_DIMS,
                 convnext_depths: tuple[int, ...] = CONVNEXT_SMALL_DEPTHS, resize: int = 224):
        super().__init__()
        self.lpips_weight = check_weight(lpips_weight, "lpips_weight", 1.0)
        self.convnext_weight = check_weight(convnext_weight, "convnext_weight", 0.1)
        if self.lpips_weight + self.convnext_weight == 0:
            raise ConfigError("lpips_weight", "and convnext_weight are both 0: the perceptual loss has no part",
                              fix="lpips_weight=1.0")
        self.resize = check_int(resize, "resize", fix="resize=224")
        self.lpips: LPIPS | None = LPIPS(lpips_vgg_path, lpips_path) if self.lpips_weight > 0 else None
        self.convnext: ConvNeXt | None = None
        if self.convnext_weight > 0:
            self.convnext = load_convnext(convnext_path, "convnext_path", dims=convnext_dims, depths=convnext_depths,
                                          user="the perceptual loss's ConvNeXt part")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        freeze(self)

    def train(self, mode: bool = True) -> PaperPerceptualLoss:
        """Always stays in eval mode (the networks are frozen)."""
        return super().train(False)

    def convnext_input(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [-1, 1] -> (B, 3, resize, resize), bicubic + antialias, ImageNet-normalised."""
        x = F.interpolate(gray_to_rgb(x, "PaperPerceptualLoss"), size=self.resize, mode="bicubic", align_corners=False,
                          antialias=True)
        return ((x + 1.0) / 2.0 - self.mean) / self.std

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y (B, C, H, W) in [-1, 1] -> scalar loss."""
        loss = x.new_zeros(())
        if self.lpips is not None:
            loss = loss + self.lpips_weight * self.lpips(x, y).mean()
        if self.convnext is not None:
            mse = F.mse_loss(self.convnext(self.convnext_input(x)), self.convnext(self.convnext_input(y)))
            loss = loss + self.convnext_weight * mse
        return loss / (self.lpips_weight + self.convnext_weight)
