"""BAR-FSQ: lookup-free binary finite scalar quantization (2 levels per channel).

Every token is k independent bits, so the implicit codebook has C = 2^k entries, but nothing
here ever materialises C: no codebook table, no integer token index, nothing of size 2^k.
Memory and compute are O(D * k), so k = 256 is as cheap as k = 16.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.tokenizer.quantizers.base import Quantizer, QuantizerOutput
from barlab.validation import check_int


class BinaryFSQ(Quantizer):
    """Binary FSQ bottleneck (BAR-FSQ, paper §3.1) with a centred threshold.

    Pipeline for z of shape (B, D, h, w)::

        u = Conv1x1(D -> k)(z)                        # (B, k, h, w)
        s = tanh(u)                                   # bounded to (-1, 1)
        q = where(s >= 0, +1, -1) + (s - s.detach())  # exactly +-1 forward, d q / d u = 1 - tanh(u)^2
        bits = (q + 1) / 2                            # (B, h, w, k) in {0, 1}
        latent = Conv1x1(k -> D)(q)                   # (B, D, h, w)

    The straight-through estimator passes the gradient of ``tanh`` (not the identity), which keeps
    pre-activations from drifting far past the threshold.

    Difference from the official code: BAR's ``FSQ`` with 2 levels bounds with
    ``tanh(u + atanh(0.5 / h)) * h - 0.5`` (h = (1 + 1e-3) / 2) and rounds to {-1, 0} before mapping
    to {-1, +1}. Its rounding threshold therefore sits at u = -atanh(0.999) ~= -3.8, not at 0, and
    the STE gradient is largest around u ~= -3.8. This implementation uses the clean, symmetric
    version (threshold at u = 0, gradient largest at 0); with a learnt ``Conv1x1`` in front the two
    differ only by a bias shift of ~3.8 at initialisation. A pre-activation of exactly 0 maps to +1.

    Args:
        latent_channels: D, encoder output / decoder input width.
        bits: k, bits per token (C = 2^k); knob ``tokenizer.bits``.
    """

    is_discrete = True

    def __init__(self, latent_channels: int, bits: int):
        super().__init__()
        self.latent_channels = check_int(latent_channels, "tokenizer.latent_channels", fix="tokenizer.latent_channels=64")
        self.k = check_int(bits, "tokenizer.bits", fix="tokenizer.bits=16")
        self.bits_per_token = self.k
        self.proj_in = nn.Conv2d(self.latent_channels, self.k, kernel_size=1)
        self.proj_out = nn.Conv2d(self.k, self.latent_channels, kernel_size=1)

    def quantize(self, u: Tensor) -> Tensor:
        """(B, k, h, w) pre-activations -> (B, k, h, w) values in {-1, +1} with a tanh STE gradient."""
        soft = torch.tanh(u.float())
        hard = torch.where(soft >= 0, 1.0, -1.0).to(soft.dtype)
        return hard + (soft - soft.detach())

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z (B, D, h, w) -> QuantizerOutput(latent (B, D, h, w), bits/codes (B, h, w, k), loss 0)."""
        q = self.quantize(self.proj_in(z))
        bits = rearrange((q.detach() + 1) / 2, "b k h w -> b h w k")
        latent = self.proj_out(q.contiguous().to(self.proj_out.weight.dtype))
        return QuantizerOutput(
            latent=latent,
            bits=bits,
            codes=bits.long(),
            loss=z.new_zeros((), dtype=torch.float32),
            metrics={},
        )

    @torch.no_grad()
    def encode_bits(self, z: Tensor) -> Tensor:
        """z (B, D, h, w) -> bits (B, h, w, k), float {0, 1}."""
        q = self.quantize(self.proj_in(z))
        return rearrange((q + 1) / 2, "b k h w -> b h w k")

    def decode_bits(self, bits: Tensor) -> Tensor:
        """bits (B, h, w, k) in {0, 1} (float, bool or long) -> latent (B, D, h, w).

        Gives exactly ``forward(z).latent`` when ``bits == encode_bits(z)``. Values other than 0/1
        are not checked; anything > 0.5 counts as a one.
        """
        if bits.ndim != 4 or bits.shape[-1] != self.k:
            raise ConfigError(
                "tokenizer.bits",
                f"decode_bits expects bits of shape (B, h, w, {self.k}), got {tuple(bits.shape)}",
                fix="use the same tokenizer.bits for the tokenizer and the generator",
            )
        q = torch.where(bits.float() > 0.5, 1.0, -1.0)
        q = rearrange(q, "b h w k -> b k h w").contiguous()
        return self.proj_out(q.to(self.proj_out.weight.dtype))
