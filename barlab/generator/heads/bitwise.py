"""Independent 2-way logits per bit (Infinity-style): cheap, but ignores correlations between bits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from barlab.generator.heads.base import Guidance, Head, HeadOutput, fp32_region, gumbel_argmax
from barlab.utils.integers import check_int


class BitwiseHead(Head):
    """``[Linear(cond_dim -> hidden) -> SiLU -> (Linear(hidden -> hidden) -> SiLU) x (depth-1) ->]
    Linear(-> 2k')`` reshaped to (N, k', 2) logits.

    ``hidden=None`` (default) is the plain linear head; ``hidden`` with ``depth`` hidden layers gives
    it an MLP trunk, e.g. to match the MBM head's parameter count (see configs/head/bitwise.yaml and
    :func:`bitwise_head_params`). Loss: cross-entropy per bit, mean over bits and tokens.
    """

    def __init__(self, cond_dim: int, bits_per_step: int, hidden: int | None = None, depth: int = 1):
        super().__init__(cond_dim, bits_per_step)
        k = self.bits_per_step
        depth = check_int(depth, "depth", fix="depth=1")
        if hidden is None:
            self.net = nn.Linear(self.cond_dim, 2 * k)
        else:
            hidden = check_int(hidden, "hidden", fix="hidden=null")
            layers: list[nn.Module] = [nn.Linear(self.cond_dim, hidden), nn.SiLU()]
            for _ in range(depth - 1):
                layers += [nn.Linear(hidden, hidden), nn.SiLU()]
            self.net = nn.Sequential(*layers, nn.Linear(hidden, 2 * k))

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


def bitwise_head_params(cond_dim: int, bits_per_step: int, hidden: int | None = None, depth: int = 1) -> int:
    """Parameters of ``BitwiseHead(cond_dim, bits_per_step, hidden, depth)`` (weights + biases)."""
    k2 = 2 * int(bits_per_step)
    if hidden is None:
        return (cond_dim + 1) * k2
    return (cond_dim + 1) * hidden + (depth - 1) * (hidden + 1) * hidden + (hidden + 1) * k2
