"""The feature network behind every FID / KID / IS / precision-recall number.

A :class:`FeatureNet` maps uint8 images (N, C, H, W) to features (N, D), when it has a
classifier head to logits (N, num_classes), and (the standard Inception only) to the spatial
features of ADM's sFID (N, S). It carries a ``name`` (stored with cached reference
statistics, so statistics from another network are refused) and a human ``label`` that is written
next to every number it produces: an FID from anything but the standard Inception says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Features:
    """features: (N, D) float32; logits: (N, num_classes) float32 or None; spatial: (N, S) float32 or None."""

    features: torch.Tensor
    logits: torch.Tensor | None = None
    spatial: torch.Tensor | None = None


class FeatureNet(nn.Module):
    """Base class. Subclasses set the attributes below and implement :meth:`extract`.

    name: short id of the exact network (e.g. ``inception-tf-2015-12-05``, ``classifier-<hash>``).
    label: what a reader must know about numbers from it (e.g. ``not comparable to Inception FID``).
    backend: ``inception`` | ``classifier`` | ``random``.
    comparable: True only for the standard FID Inception (numbers comparable with papers).
    num_features: D. num_classes: size of the logits, or 0 when there are none.
    class_logits: whether the logits are the dataset's classes (then they judge class accuracy).
    num_spatial: S, the size of the sFID features, or 0 when there are none; spatial_label: what they are.
    """

    name: str = "feature-net"
    label: str = ""
    backend: str = ""
    comparable: bool = False
    num_features: int = 0
    num_classes: int = 0
    class_logits: bool = True
    num_spatial: int = 0
    spatial_label: str = ""

    def extract(self, images: torch.Tensor) -> Features:
        """images: uint8 (N, C, H, W), C in {1, 3} → :class:`Features`."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 (N, C, H, W) → features (N, D); what torchmetrics' ``feature=`` calls."""
        return self.extract(images).features

    def describe(self) -> dict:
        """The fields written next to every metric: backend, network name, label, comparability."""
        return {"backend": self.backend, "feature_net": self.name, "feature_label": self.label,
                "comparable_to_papers": self.comparable}

    def not_computed(self) -> dict[str, str]:
        """``metric -> why this network does not give it``, written as ``<metric>_label`` next to the numbers."""
        if self.num_spatial:
            return {}
        return {"sfid": "only the standard FID Inception (backend inception) has ADM's spatial features"}


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) → (N, 3, H, W); grayscale is repeated over the three channels."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def as_gray(images: torch.Tensor) -> torch.Tensor:
    """float (N, 1|3, H, W) → (N, 1, H, W) by the channel mean (exact for repeated grayscale)."""
    return images if images.shape[1] == 1 else images.mean(dim=1, keepdim=True)
