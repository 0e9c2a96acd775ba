"""Independent 2-way logits per bit (Infinity-style): cheap, but ignores correlations between bits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from barlab.generator.heads.base import Guidance, Head, HeadOutput, fp32_region, gumbel_argmax
from barlab.tokenizer.quantizers.base import check_int


class BitwiseHead(Head):
    """``[Linear(cond_dim -> hidden) -> SiLU ->] Linear(-> 2k')`` reshaped to (N, k', 2) logits.

    Loss: cross-entropy per bit, mean over bits and tokens.
    """

    def __init__(self, cond_dim: int, bits_per_step: int, hidden: int | None = None):
        super().__init__(cond_dim, bits_per_step)
        k = self.bits_per_step
        if hidden is None:
            self.net = nn.Linear(self.cond_dim, 2 * k)
        else:
            hidden = check_int(hidden, "head.hidden")
            self.net = nn.Sequential(nn.Linear(self.cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * k))

    def logits(self, cond: Tensor) -> Tensor:
        """cond (N, cond_dim) -> fp32 logits (N, k', 2)."""
        with fp32_region(cond.device):
            return rearrange(self.net(cond.float()), "n (k two) -> n k two", two=2)

    def loss(self, cond: Tensor, bits: Tensor) -> HeadOutput:
        """cond (N, cond_dim), bits (N, k') {0,1} -> mean per-bit CE."""
        self._check_inputs(cond, bits)
        logits = self.logits(cond)
        target = bits.round().long()
        loss = F.cross_entropy(rearrange(logits, "n k two -> (n k) two"), rearrange(target, "n k -> (n k)"))
        acc = (logits.argmax(dim=-1) == target).float().mean()
        return HeadOutput(loss=loss, bit_accuracy=acc.detach())

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor | None, guidance: Guidance,
               temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Per-bit Gumbel-max at temperature τ on the (guided) logits; τ = 0 is argmax. -> bits (N, k')."""
        self._check_inputs(cond)
        logits = self._guided(self.logits, cond, uncond, guidance)
        return gumbel_argmax(logits, temperature, generator).float()
