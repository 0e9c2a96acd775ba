"""The quantizer interface shared by every tokenizer bottleneck.

A quantizer sits between the encoder and the decoder. It takes the encoder output
``z`` of shape (B, D, h, w), projects it to its own code space, quantizes it (or samples a
continuous latent) and projects it back to (B, D, h, w) for the decoder.

Discrete quantizers additionally turn ``z`` into token bits (B, h, w, k) and back
(``encode_bits`` / ``decode_bits``); continuous ones raise ``ConfigError`` there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.utils.integers import check_int


@dataclass
class QuantizerOutput:
    """What every quantizer returns.

    Attributes:
        latent: (B, D, h, w) quantized latent fed to the decoder.
        bits: (B, h, w, k) float {0, 1} token bits (binary FSQ); None otherwise.
        codes: (B, h, w, n) long per-channel level indices (FSQ, binary FSQ); None for continuous.
        loss: scalar auxiliary loss (0 for FSQ; weighted KL for the KL latent).
        metrics: scalars to log, e.g. ``{"kl": ...}``.
    """

    latent: Tensor
    bits: Tensor | None
    codes: Tensor | None
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """Validate a token grid ``(h, w)`` of positive ints and return it as plain Python ints."""
    if len(grid) != 2:
        raise ValueError(f"grid must be (h, w), got {grid!r}")
    h, w = (int(g) for g in grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    return h, w


class Quantizer(nn.Module):
    """Abstract bottleneck: (B, D, h, w) -> ``QuantizerOutput``.

    Subclasses set:
        latent_channels: D, the encoder output / decoder input width.
        is_discrete: whether the latent is a finite set of tokens.
        bits_per_token: ``ceil(log2 C)`` for a discrete codebook of size C;
            ``channels * 16`` for a continuous latent stored in 16-bit precision.
    """

    latent_channels: int
    is_discrete: bool = False
    bits_per_token: int

    def decoder_width(self, out_channels: int | None) -> int:
        """D_out, the width ``proj_out`` gives the decoder: ``out_channels``, or D when it is None (the
        paper tokenizer: 1152 in, 1024 out, knob ``tokenizer.quantizer.out_channels``)."""
        return check_int(out_channels, "out_channels", fix=f"out_channels={self.latent_channels}",
                         allow_none=True) or self.latent_channels

    def bits_per_image(self, grid: tuple[int, int]) -> int:
        """Bit budget of one image: ``h * w * bits_per_token`` as an exact Python int."""
        h, w = check_grid(grid)
        return h * w * int(self.bits_per_token)

    def forward(self, z: Tensor) -> QuantizerOutput:  # pragma: no cover - abstract
        """Quantize ``z`` (B, D, h, w); see ``QuantizerOutput`` for the shapes."""
        raise NotImplementedError

    def encode_bits(self, z: Tensor) -> Tensor:
        """(B, D, h, w) -> (B, h, w, k) {0,1} float token bits. Discrete quantizers only."""
        raise self._no_bits()

    def decode_bits(self, bits: Tensor) -> Tensor:
        """(B, h, w, k) {0,1} bits -> (B, D, h, w) latent. Discrete quantizers only."""
        raise self._no_bits()

    def _no_bits(self) -> ConfigError:
        return ConfigError(
            "",
            f"{type(self).__name__} is a continuous latent and has no token bits",
            fix="a discrete quantizer (binary_fsq or fsq) for a bit-level generator",
        )
