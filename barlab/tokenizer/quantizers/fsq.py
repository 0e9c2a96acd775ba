"""Finite scalar quantization (Mentzer et al., 2023) with 1x1-conv projections."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.tokenizer.quantizers.base import Quantizer, QuantizerOutput
from barlab.utils.integers import check_int

_EPS = 1e-3  # widens the tanh bound a little so the extreme levels are reachable (as in the FSQ paper)
_MAX_INDEX_BITS = 62  # encode_bits packs the token index into an int64


class FSQ(Quantizer):
    """FSQ bottleneck: each of n = len(levels) channels is rounded to one of ``levels[i]`` values.

    Pipeline for z of shape (B, D, h, w)::

        u = Conv1x1(D -> n)(z)                                   # (B, n, h, w)
        b = tanh(u + shift) * half_l - offset                    # bound per channel
        r = round(b) with a straight-through (identity) gradient # integers in [-(L//2), (L-1)//2]
        latent = Conv1x1(n -> D)(r / (L // 2))                   # normalised to [-1, 1]
        codes = r + L // 2                                       # (B, h, w, n) in [0, L)

    with ``half_l = (L - 1) * (1 + eps) / 2``, ``offset = 0.5`` for even L (0 for odd) and
    ``shift = atanh(offset / half_l)``: the half-step offset that gives even L exactly L levels.

    ``bits_per_token = ceil(log2(prod(levels)))`` is computed with Python ints, so it is exact for
    any product. ``encode_bits`` writes the mixed-radix token index (channel 0 least significant)
    as ``bits_per_token`` little-endian bits; this needs the index to fit an int64 (≤ 62 bits).

    Args:
        latent_channels: D.
        levels: levels per channel, each an int >= 2; knob ``tokenizer.quantizer.levels``.
    """

    is_discrete = True

    def __init__(self, latent_channels: int, levels: Sequence[int]):
        super().__init__()
        self.latent_channels = check_int(latent_channels, "latent_channels", fix="latent_channels=64")
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(levels) == 0:
            raise ConfigError(
                "levels",
                f"must be a non-empty list of integers >= 2, got {levels!r}",
                fix="levels=[8,8,8,5,5,5]",
            )
        self.levels = [check_int(lv, "levels", minimum=2, fix="levels=[8,8,8,5,5,5]") for lv in levels]
        self.codebook_size = math.prod(self.levels)  # exact Python int, may be huge
        self.bits_per_token = (self.codebook_size - 1).bit_length()  # == ceil(log2 C), exact
        n = len(self.levels)
        half_l = [(lv - 1) * (1 + _EPS) / 2 for lv in self.levels]
        offset = [0.5 if lv % 2 == 0 else 0.0 for lv in self.levels]
        shift = [math.atanh(o / h) for o, h in zip(offset, half_l)]
        # Small (n,) constants; non-persistent so checkpoints stay independent of them.
        self.register_buffer("_half_l", torch.tensor(half_l).view(1, n, 1, 1), persistent=False)
        self.register_buffer("_offset", torch.tensor(offset).view(1, n, 1, 1), persistent=False)
        self.register_buffer("_shift", torch.tensor(shift).view(1, n, 1, 1), persistent=False)
        self.register_buffer("_half_width", torch.tensor([lv // 2 for lv in self.levels]).view(1, n, 1, 1),
                             persistent=False)
        self.proj_in = nn.Conv2d(self.latent_channels, n, kernel_size=1)
        self.proj_out = nn.Conv2d(n, self.latent_channels, kernel_size=1)

    def quantize(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(B, n, h, w) -> (normalised values in [-1, 1] with STE gradient, long codes (B, n, h, w))."""
        bounded = torch.tanh(u.float() + self._shift) * self._half_l - self._offset
        rounded = torch.round(bounded).detach() + (bounded - bounded.detach())
        half_width = self._half_width.float()
        codes = (rounded.detach() + half_width).long()
        return rounded / half_width, codes

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """codes (B, h, w, n) long -> latent (B, D, h, w); inverse of the rounding in ``quantize``."""
        codes = rearrange(codes, "b h w n -> b n h w").contiguous()
        half_width = self._half_width.float()
        normalised = (codes.float() - half_width) / half_width
        return self.proj_out(normalised.to(self.proj_out.weight.dtype))

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z (B, D, h, w) -> QuantizerOutput(latent (B, D, h, w), bits None, codes (B, h, w, n), loss 0)."""
        values, codes = self.quantize(self.proj_in(z))
        latent = self.proj_out(values.contiguous().to(self.proj_out.weight.dtype))
        return QuantizerOutput(
            latent=latent,
            bits=None,
            codes=rearrange(codes, "b n h w -> b h w n"),
            loss=z.new_zeros((), dtype=torch.float32),
            metrics={},
        )

    def _check_index_bits(self) -> None:
        if self.bits_per_token > _MAX_INDEX_BITS:
            raise ConfigError(
                "levels",
                f"FSQ token bits are limited to {_MAX_INDEX_BITS} (int64 index), "
                f"these levels need {self.bits_per_token}",
                fix="use fewer/smaller levels, or tokenizer.quantizer=binary_fsq for large codebooks",
            )

    def _basis(self, device: torch.device) -> Tensor:
        basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        return torch.tensor(basis, dtype=torch.long, device=device)

    @torch.no_grad()
    def encode_bits(self, z: Tensor) -> Tensor:
        """z (B, D, h, w) -> (B, h, w, k) float {0,1}: little-endian bits of the mixed-radix index."""
        self._check_index_bits()
        _, codes = self.quantize(self.proj_in(z))
        codes = rearrange(codes, "b n h w -> b h w n")
        index = (codes * self._basis(codes.device)).sum(dim=-1, keepdim=True)  # (B, h, w, 1)
        shifts = torch.arange(self.bits_per_token, device=codes.device)
        return ((index >> shifts) & 1).float()

    def decode_bits(self, bits: Tensor) -> Tensor:
        """bits (B, h, w, k) {0,1} -> latent (B, D, h, w). Indices >= prod(levels) wrap modulo it."""
        self._check_index_bits()
        if bits.ndim != 4 or bits.shape[-1] != self.bits_per_token:
            raise ConfigError(
                "levels",
                f"decode_bits expects bits of shape (B, h, w, {self.bits_per_token}), got {tuple(bits.shape)}",
                fix="use the same quantizer levels for the tokenizer and the generator",
            )
        shifts = torch.arange(self.bits_per_token, device=bits.device)
        index = ((bits.float() > 0.5).long() << shifts).sum(dim=-1, keepdim=True)  # (B, h, w, 1)
        levels = torch.tensor(self.levels, dtype=torch.long, device=bits.device)
        codes = (index // self._basis(bits.device)) % levels  # (B, h, w, n)
        return self.codes_to_latent(codes)
