"""LPIPS (VGG16 variant) as in the official BAR tokenizer loss, from two local files.

The distance is richzhang's LPIPS v0.1 / taming's ``LPIPS``: a frozen torchvision VGG16 (its
``features`` up to relu5_3) plus five learned 1x1 convs. Two files, nothing is downloaded:

- ``vgg_path``: torchvision ``vgg16-397923af.pth`` (``features.N.*``; ``classifier.*`` ignored) or a
  features-only state dict (``N.*``), read by :func:`barlab.tokenizer.perceptual.load_vgg16_features_state`;
- ``lpips_path``: the five linear layers, exactly the keys ``lin0.model.1.weight`` (1, 64, 1, 1) ...
  ``lin4.model.1.weight`` (1, 512, 1, 1): taming-transformers' ``vgg_lpips.pth`` or richzhang's
  ``lpips/weights/v0.1/vgg.pth`` (same layout). Any other key is refused in one line.

State-dict keys of :class:`LPIPS`: ``features.{0,2,5,...,28}.{weight,bias}`` (torchvision indices) and
``lin{0..4}.model.1.weight``; the scaling constants are non-persistent buffers.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from barlab.tokenizer.perceptual import VGG16_LAYERS, vgg16_features_from_file
from barlab.tokenizer.pretrained import freeze, gray_to_rgb, load_state_strict, read_state_file

LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS ScalingLayer, applied to inputs in [-1, 1]: (x - shift) / scale
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_LPIPS_FILE = ("LPIPS linear-layer state dict (taming-transformers vgg_lpips.pth or richzhang "
               "lpips/weights/v0.1/vgg.pth)")


class _NetLin(nn.Module):
    """One LPIPS head: Dropout (a no-op, the module is always in eval) then a 1x1 conv C -> 1 without bias;
    keys ``model.1.weight`` as in the official file."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


def lpips_heads() -> nn.ModuleDict:
    """The five LPIPS heads, keys ``lin{k}.model.1.weight`` (1, C_k, 1, 1)."""
    return nn.ModuleDict({f"lin{k}": _NetLin(c) for k, c in enumerate(LPIPS_CHANNELS)})


class LPIPS(nn.Module):
    """Frozen LPIPS distance: x, y (B, C, H, W) in [-1, 1], C in {1, 3} -> (B, 1, 1, 1).

    As the official ``LPIPS.forward``: both images go through the scaling layer ``(x - shift) / scale``
    (shift (-.030, -.088, -.188), scale (.458, .448, .450)), then VGG16 features at relu1_2, relu2_2,
    relu3_3, relu4_3, relu5_3; each is normalised over channels ``f / (sqrt(sum_c f^2) + 1e-10)``; the
    squared difference goes through that layer's 1x1 conv (no bias), is averaged over space, and the five
    are summed. No resize. Gray input is repeated to 3 channels (the official takes RGB only).
    Frozen (requires_grad False, always eval); gradients flow to the inputs.

    Args:
        vgg_path: torchvision VGG16 state dict (full or features-only).
        lpips_path: the five LPIPS linear layers (see the module docstring).
    """

    def __init__(self, vgg_path: str | os.PathLike | None, lpips_path: str | os.PathLike | None):
        super().__init__()
        self.layer_ids = tuple(VGG16_LAYERS.values())  # 3, 8, 15, 22, 29
        self.features = vgg16_features_from_file(vgg_path, "vgg_path", user="LPIPS", fix="vgg_path=<that file>",
                                                 last=self.layer_ids[-1])
        heads = lpips_heads()
        state = read_state_file(lpips_path, "lpips_path", user="LPIPS", expected=_LPIPS_FILE,
                                fix="lpips_path=<that file>")
        load_state_strict(heads, state, lpips_path, "lpips_path", expected=_LPIPS_FILE, fix="lpips_path=<that file>")
        for name, head in heads.items():
            self.add_module(name, head)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        freeze(self)

    def train(self, mode: bool = True) -> LPIPS:
        """Always stays in eval mode (the network is frozen)."""
        return super().train(False)

    def _feats(self, x: Tensor) -> list[Tensor]:
        x = (gray_to_rgb(x, "LPIPS") - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layer_ids:
                out.append(x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y (B, C, H, W) in [-1, 1] -> LPIPS distance (B, 1, 1, 1)."""
        total: Tensor | None = None
        for k, (fx, fy) in enumerate(zip(self._feats(x), self._feats(y))):
            head = getattr(self, f"lin{k}")
            term = head.model((fx - fy) ** 2).mean(dim=(2, 3), keepdim=True)
            total = term if total is None else total + term
        assert total is not None
        return total
