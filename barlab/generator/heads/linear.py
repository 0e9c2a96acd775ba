"""Softmax over all 2^k' codes of a token: the classic AR head, only viable for small k'."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.generator.heads.base import (Guidance, Head, HeadOutput, bits_to_code, code_to_bits, fp32_region,
                                         gumbel_argmax)
from barlab.tokenizer.quantizers.base import check_int

MAX_CODE_BITS = 62  # codes are built in int64


def linear_head_params(cond_dim: int, bits_per_step: int) -> int:
    """Parameters of ``Linear(cond_dim -> 2^bits_per_step)`` (weights + bias), as an exact Python int."""
    return (2 ** int(bits_per_step)) * (int(cond_dim) + 1)


class LinearHead(Head):
    """``Linear(cond_dim -> 2^k')`` logits, cross-entropy on the integer code (bit j weighs 2^j).

    Refuses in ``__init__``, before creating any parameter, when the layer would need more than
    ``max_params`` parameters.
    """

    def __init__(self, cond_dim: int, bits_per_step: int, max_params: int = 2**27):
        super().__init__(cond_dim, bits_per_step)
        k = self.bits_per_step
        max_params = check_int(max_params, "head.max_params")
        n = linear_head_params(self.cond_dim, k)
        if n > max_params or k > MAX_CODE_BITS:
            raise ConfigError("head", f"linear softmax over 2^{k} codes needs {n:,} parameters, "
                              f"above head.max_params={max_params:,}",
                              fix="head=mbm (or head=bitwise), or raise head.max_params")
        self.num_codes = 2**k
        self.proj = nn.Linear(self.cond_dim, self.num_codes)

    def logits(self, cond: Tensor) -> Tensor:
        """cond (N, cond_dim) -> fp32 logits (N, 2^k')."""
        with fp32_region(cond.device):
            return self.proj(cond.float())

    def loss(self, cond: Tensor, bits: Tensor) -> HeadOutput:
        """cond (N, cond_dim), bits (N, k') {0,1} -> mean CE over the N tokens."""
        self._check_inputs(cond, bits)
        logits = self.logits(cond)
        target = bits_to_code(bits)
        loss = F.cross_entropy(logits, target)
        pred_bits = code_to_bits(logits.argmax(dim=-1), self.bits_per_step)
        acc = (pred_bits == bits.round()).float().mean()
        code_acc = (logits.argmax(dim=-1) == target).float().mean()
        return HeadOutput(loss=loss, bit_accuracy=acc.detach(), metrics={"code_accuracy": code_acc.detach()})

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor | None, guidance: Guidance,
               temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Gumbel-max draw from softmax(l/τ) of the (guided) logits; τ = 0 is argmax. -> bits (N, k')."""
        self._check_inputs(cond)
        logits = self._guided(self.logits, cond, uncond, guidance)
        return code_to_bits(gumbel_argmax(logits, temperature, generator), self.bits_per_step)
