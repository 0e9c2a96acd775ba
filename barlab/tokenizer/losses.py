"""Pixel reconstruction loss of the tokenizer (paper §3.2: 0.1 * L1 + 1.0 * L2)."""

from __future__ import annotations

import numbers

from torch import Tensor, nn
from torch.nn import functional as F

from barlab.errors import ConfigError


def check_weight(value: object, knob: str, default: float) -> float:
    """A loss weight: a non-negative real number, else ConfigError on ``knob``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ConfigError(knob, f"must be a non-negative number, got {value!r}", fix=f"{knob}={default}")
    return float(value)


class ReconstructionLoss(nn.Module):
    """Weighted L1 + L2 between reconstruction and target, both (B, C, H, W).

    ``forward`` returns ``{"l1": mean |r - t|, "l2": mean (r - t)^2, "loss": l1_weight * l1 + l2_weight * l2}``,
    all float32 scalars (means over every element).
    """

    def __init__(self, l1_weight: float = 0.1, l2_weight: float = 1.0):
        super().__init__()
        self.l1_weight = check_weight(l1_weight, "l1_weight", 0.1)
        self.l2_weight = check_weight(l2_weight, "l2_weight", 1.0)

    def forward(self, recon: Tensor, target: Tensor) -> dict[str, Tensor]:
        """recon, target (B, C, H, W) -> dict of scalars l1, l2, loss."""
        if recon.shape != target.shape:
            raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
        recon, target = recon.float(), target.float()
        l1 = F.l1_loss(recon, target)
        l2 = F.mse_loss(recon, target)
        return {"l1": l1, "l2": l2, "loss": self.l1_weight * l1 + self.l2_weight * l2}
