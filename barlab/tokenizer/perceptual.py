"""LPIPS-style perceptual distance on a frozen VGG16 loaded from a local state dict.

Nothing is downloaded. The feature stack is built here in plain torch with the same module
indices as torchvision's ``vgg16().features``, so a torchvision VGG16 ``.pth`` loads directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.tokenizer.pretrained import freeze, gray_to_rgb, load_state_strict, read_state_file

_KNOB = "weights_path"
# ``weight``: the perceptual loss's weight, applied by the caller (0 turns the loss off)
_FIX = "weight=0 or a path"
# torchvision VGG16 "D" configuration; "M" is a 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                     512, 512, 512, "M", 512, 512, 512, "M")
# Index in ``features`` of the ReLU that produces each named activation.
VGG16_LAYERS: dict[str, int] = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
# what a user must get (torchvision's IMAGENET1K_V1 VGG16 weights)
_VGG_FILE = "VGG16 state dict (torchvision vgg16-397923af.pth)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features() -> nn.Sequential:
    """torchvision-compatible ``vgg16().features``: convs at indices 0, 2, 5, 7, 10, ..., 28."""
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = int(v)
    return nn.Sequential(*layers)


def load_vgg16_features_state(weights_path: str | os.PathLike | None, knob: str = _KNOB, *,
                              user: str = "the perceptual loss", fix: str = _FIX) -> dict[str, Tensor]:
    """Read a VGG16 state dict and return it with features-only keys (``"0.weight"``, ...).

    Accepts a full torchvision vgg16 state dict (``features.N.*``; ``classifier.*`` is ignored) or a
    features-only one (``N.*``). A missing path raises ConfigError on ``knob`` (default ``weights_path``).
    """
    state = read_state_file(weights_path, knob, user=user, expected=_VGG_FILE, fix=fix)
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return state


def vgg16_features_from_file(weights_path: str | os.PathLike | None, knob: str = _KNOB, *,
                             user: str = "the perceptual loss", fix: str = _FIX,
                             last: int | None = None) -> nn.Sequential:
    """A frozen ``vgg16().features`` loaded strictly from ``weights_path`` (see load_vgg16_features_state),
    cut after module index ``last`` (None: all 31 modules); state-dict keys ``"0.weight"``, ... unchanged.
    A wrong file is one ConfigError line on ``knob``."""
    features = vgg16_features()
    state = load_vgg16_features_state(weights_path, knob, user=user, fix=fix)
    load_state_strict(features, state, weights_path, knob, expected=_VGG_FILE, fix=fix)
    if last is not None:
        features = features[: last + 1]
    return freeze(features)


class VGGPerceptualLoss(nn.Module):
    """Frozen VGG16 perceptual distance between two image batches.

    For each chosen layer l: features f_l (B, C_l, H_l, W_l) of both images are normalised to unit
    length over channels, then ``d_l = mean_{h,w} sum_c (f_l(x) - f_l(y))^2``; the distance is
    ``sum_l d_l`` averaged over the batch (LPIPS with all linear weights equal to 1, no learned heads).
    Inputs are (B, C, H, W) in [-1, 1] with C in {1, 3}; gray is repeated to 3 channels, then ImageNet
    mean/std normalisation. Images are not resized. Weights are frozen (requires_grad False) and the
    module stays in eval mode; gradients still flow to the inputs.

    Args:
        weights_path: local torchvision VGG16 state dict (full or features-only); knob
            ``tokenizer.loss.perceptual.weights_path``.
        layers: subset of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    """

    def __init__(self, weights_path: str | os.PathLike | None, layers: Sequence[str] = tuple(VGG16_LAYERS)):
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if not layers or unknown:
            raise ConfigError(
                "layers",
                f"unknown or empty layer list {list(layers)!r}; choose from {list(VGG16_LAYERS)}",
                fix="layers=[relu1_2,relu2_2,relu3_3,relu4_3,relu5_3]",
            )
        self.layer_ids = sorted(VGG16_LAYERS[name] for name in layers)
        # drop what no chosen layer needs; keys unchanged
        self.features = vgg16_features_from_file(weights_path, last=self.layer_ids[-1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        """Always stays in eval mode (the network is frozen)."""
        return super().train(False)

    def _prepare(self, x: Tensor) -> Tensor:
        return ((gray_to_rgb(x, "VGGPerceptualLoss").float() + 1) / 2 - self.mean) / self.std

    def _feats(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layer_ids:
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        """x, y (B, C, H, W) in [-1, 1] -> distance, a scalar (``"mean"``) or (B,) (``"none"``)."""
        fx = self._feats(self._prepare(x))
        fy = self._feats(self._prepare(y))
        dist = sum((a - b).pow(2).sum(dim=1).mean(dim=(1, 2)) for a, b in zip(fx, fy))
        return dist.mean() if reduction == "mean" else dist
