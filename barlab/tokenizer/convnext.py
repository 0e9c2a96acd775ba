"""ConvNeXt (torchvision layout) for the official BAR perceptual loss, loaded from a local file.

Written in plain torch with torchvision's module names, so torchvision's ``convnext_small-0c510722.pth``
(ImageNet-1k, ``ConvNeXt_Small_Weights.IMAGENET1K_V1``) loads strictly. Nothing is downloaded.

State-dict keys (stage s = 0..3 at ``features.{1,3,5,7}``, block j; downsample d = 1..3 at
``features.{2,4,6}``):

- ``features.0.0.{weight,bias}`` stem Conv2d(3, dims[0], 4, stride 4); ``features.0.1.{weight,bias}`` LayerNorm2d;
- ``features.{2s+1}.{j}.layer_scale`` (C, 1, 1); ``.block.0.{weight,bias}`` depthwise 7x7 conv;
  ``.block.2.{weight,bias}`` LayerNorm(C); ``.block.3.{weight,bias}`` Linear(C, 4C); ``.block.5.{weight,bias}``
  Linear(4C, C);
- ``features.{2d}.0.{weight,bias}`` LayerNorm2d; ``features.{2d}.1.{weight,bias}`` Conv2d(k 2, stride 2);
- ``classifier.0.{weight,bias}`` LayerNorm2d(dims[-1]); ``classifier.2.{weight,bias}`` Linear(dims[-1], classes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from barlab.errors import ConfigError
from barlab.tokenizer.pretrained import freeze, load_state_strict, read_state_file
from barlab.utils.integers import check_int

CONVNEXT_SMALL_DIMS = (96, 192, 384, 768)
CONVNEXT_SMALL_DEPTHS = (3, 3, 27, 3)
_CONVNEXT_FILE = "ConvNeXt-S state dict (torchvision convnext_small-0c510722.pth)"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W) (torchvision ``LayerNorm2d``), eps 1e-6."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        x = rearrange(x, "b c h w -> b h w c")
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return rearrange(x, "b h w c -> b c h w")


class _ChannelsLast(nn.Module):
    """(B, C, H, W) <-> (B, H, W, C); no parameters (torchvision's ``Permute``, keeps the block indices)."""

    def __init__(self, to_last: bool):
        super().__init__()
        self.pattern = "b c h w -> b h w c" if to_last else "b h w c -> b c h w"

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(x, self.pattern)


class CNBlock(nn.Module):
    """ConvNeXt block: x (B, C, H, W) -> x + layer_scale * block(x), same shape.

    block = depthwise 7x7 conv (pad 3) -> channels-last -> LayerNorm(C, eps 1e-6) -> Linear(C, 4C) -> GELU (exact)
    -> Linear(4C, C) -> channels-first. torchvision's stochastic depth is a no-op in eval and is left out.
    """

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim),
            _ChannelsLast(True),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            _ChannelsLast(False),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        return x + self.layer_scale * self.block(x)


class ConvNeXt(nn.Module):
    """torchvision ``ConvNeXt``: image (B, 3, H, W) (ImageNet-normalised) -> logits (B, num_classes).

    features.0 stem [Conv2d(3, dims[0], 4, stride 4), LayerNorm2d]; then for each stage its CNBlocks, and between
    stages [LayerNorm2d, Conv2d(k 2, stride 2)]; global average pool; classifier [LayerNorm2d, Flatten,
    Linear]. H and W must be multiples of 32 (4 * 2^3); the perceptual loss feeds 224x224.

    Args:
        dims: channels per stage (ConvNeXt-S: 96, 192, 384, 768).
        depths: blocks per stage (ConvNeXt-S: 3, 3, 27, 3).
        num_classes: logits (1000 for ImageNet).
    """

    def __init__(self, dims: Sequence[int] = CONVNEXT_SMALL_DIMS, depths: Sequence[int] = CONVNEXT_SMALL_DEPTHS,
                 num_classes: int = 1000):
        super().__init__()
        dims = tuple(dims)
        depths = tuple(depths)
        if not dims or len(dims) != len(depths):
            raise ConfigError("depths", f"need one depth per stage: dims {list(dims)}, depths {list(depths)}",
                              fix="depths=[3,3,27,3]")
        for d in dims:
            check_int(d, "dims", fix="dims=[96,192,384,768]")
        for d in depths:
            check_int(d, "depths", fix="depths=[3,3,27,3]")
        num_classes = check_int(num_classes, "num_classes", fix="num_classes=1000")
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))]
        for s, (dim, depth) in enumerate(zip(dims, depths)):
            layers.append(nn.Sequential(*[CNBlock(dim) for _ in range(depth)]))
            if s + 1 < len(dims):
                layers.append(nn.Sequential(LayerNorm2d(dim), nn.Conv2d(dim, dims[s + 1], kernel_size=2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1]), nn.Flatten(1), nn.Linear(dims[-1], num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) -> logits (B, num_classes)."""
        return self.classifier(self.avgpool(self.features(x)))


def load_convnext(weights_path: str | os.PathLike | None, knob: str = "weights_path", *,
                  dims: Sequence[int] = CONVNEXT_SMALL_DIMS, depths: Sequence[int] = CONVNEXT_SMALL_DEPTHS,
                  num_classes: int = 1000, user: str = "the ConvNeXt perceptual loss",
                  fix: str | None = None) -> ConvNeXt:
    """A frozen (requires_grad False, eval) ConvNeXt loaded strictly from a local torchvision state dict.

    A missing, unreadable or mismatching file is one ConfigError line on ``knob`` naming the file and
    ``convnext_small-0c510722.pth``.
    """
    fix = fix or f"{knob}=<that file>"
    state = read_state_file(weights_path, knob, user=user, expected=_CONVNEXT_FILE, fix=fix)
    model = ConvNeXt(dims, depths, num_classes)
    load_state_strict(model, state, weights_path, knob, expected=_CONVNEXT_FILE, fix=fix)
    return freeze(model)
