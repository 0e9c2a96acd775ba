"""Small convolutional encoder / decoder for the tokenizer (CPU-friendly, any power-of-two factor).

Layout (f = 2^n, channel multiplier ``m_i = min(2^i, max_mult)``, ``c_i = width * m_i``)::

    encoder: x (B, C_in, H, W)
        stem Conv3x3 C_in -> c_0
        level i = 0 .. n-1 at H/2^i:  depth x ResBlock(c_i), Conv3x3 stride 2 (c_i -> c_{i+1})
        bottom at H/f:                 depth x ResBlock(c_n)
        GroupNorm, SiLU, Conv3x3 c_n -> out_channels               -> (B, out_channels, H/f, W/f)

    decoder: z (B, in_channels, h, w) mirrors it
        stem Conv3x3 in_channels -> c_n, depth x ResBlock(c_n)
        level i = n-1 .. 0: nearest x2 + Conv3x3 (c_{i+1} -> c_i), depth x ResBlock(c_i)
        GroupNorm, SiLU, Conv3x3 c_0 -> out_channels                -> (B, out_channels, h*f, w*f)

The decoder output is unbounded; the reconstruction loss compares it with targets in [-1, 1].

Both run their convolutions in ``channels_last`` memory format (about 25% faster with oneDNN on
CPU, also the fast path for cuDNN in mixed precision) and return ordinary contiguous tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from barlab.errors import ConfigError
from barlab.utils.integers import check_int


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels`` (GroupNorm needs a divisor)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def num_levels(factor: object, knob: str) -> int:
    """log2 of a power-of-two resampling factor >= 1, else ConfigError on ``knob`` (the caller's argument)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or factor & (factor - 1):
        raise ConfigError(knob, f"must be a power of two >= 1 (1, 2, 4, 8, 16, ...), got {factor!r}", fix=f"{knob}=4")
    return int(math.log2(factor))


def level_channels(width: int, levels: int, max_mult: int) -> list[int]:
    """Channels ``[c_0, ..., c_levels]`` with ``c_i = width * min(2^i, max_mult)``."""
    return [width * min(2**i, max_mult) for i in range(levels + 1)]


class ResBlock(nn.Module):
    """Pre-activation residual block: (B, C_in, H, W) -> (B, C_out, H, W).

    ``x + Conv3x3(SiLU(GN(Conv3x3(SiLU(GN(x))))))`` with a 1x1 skip when C_in != C_out.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = nn.GroupNorm(num_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(num_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Upsample(nn.Module):
    """Nearest-neighbour x2 then Conv3x3: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _head(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(num_groups(channels), channels), nn.SiLU(),
                         nn.Conv2d(channels, out_channels, 3, padding=1))


class ConvEncoder(nn.Module):
    """Image (B, in_channels, H, W) -> latent (B, out_channels, H/f, W/f); H and W divisible by f.

    Args:
        in_channels: image channels (1 for gray, 3 for RGB).
        width: c_0, channels at full resolution; knob ``tokenizer.encoder.width``.
        depth: residual blocks per level; knob ``tokenizer.encoder.depth``.
        downsample: f, a power of two; knob ``tokenizer.encoder.downsample``.
        out_channels: D, latent width fed to the quantizer.
        max_mult: cap on the channel multiplier 2^level.
    """

    def __init__(self, in_channels: int, width: int = 64, depth: int = 1, downsample: int = 4, out_channels: int = 64,
                 max_mult: int = 4):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", fix="in_channels=1")
        width = check_int(width, "width", fix="width=64")
        depth = check_int(depth, "depth", minimum=0, fix="depth=1")
        max_mult = check_int(max_mult, "max_mult", fix="max_mult=4")
        self.out_channels = check_int(out_channels, "out_channels", fix="out_channels=64")
        levels = num_levels(downsample, "downsample")
        self.downsample = downsample
        chans = level_channels(width, levels, max_mult)

        self.stem = nn.Conv2d(self.in_channels, chans[0], 3, padding=1)
        stages: list[nn.Module] = []
        for i in range(levels):
            stages += [ResBlock(chans[i]) for _ in range(depth)]
            stages.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1))
        stages += [ResBlock(chans[-1]) for _ in range(depth)]
        self.stages = nn.Sequential(*stages)
        self.head = _head(chans[-1], self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, in_channels, H, W) -> (B, out_channels, H/f, W/f)."""
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.stages(self.stem(x))).contiguous()


class ConvDecoder(nn.Module):
    """Latent (B, in_channels, h, w) -> image (B, out_channels, h*f, w*f), unbounded values.

    Args:
        out_channels: image channels.
        width: c_0, channels at full resolution; knob ``tokenizer.decoder.width``.
        depth: residual blocks per level; knob ``tokenizer.decoder.depth``.
        upsample: f, a power of two; knob ``tokenizer.decoder.upsample``.
        in_channels: D, latent width coming out of the quantizer.
        max_mult: cap on the channel multiplier 2^level.
    """

    def __init__(self, out_channels: int, width: int = 64, depth: int = 1, upsample: int = 4, in_channels: int = 64,
                 max_mult: int = 4):
        super().__init__()
        self.out_channels = check_int(out_channels, "out_channels", fix="out_channels=1")
        width = check_int(width, "width", fix="width=64")
        depth = check_int(depth, "depth", minimum=0, fix="depth=1")
        max_mult = check_int(max_mult, "max_mult", fix="max_mult=4")
        self.in_channels = check_int(in_channels, "in_channels", fix="in_channels=64")
        levels = num_levels(upsample, "upsample")
        self.upsample = upsample
        chans = level_channels(width, levels, max_mult)

        self.stem = nn.Conv2d(self.in_channels, chans[-1], 3, padding=1)
        stages: list[nn.Module] = [ResBlock(chans[-1]) for _ in range(depth)]
        for i in reversed(range(levels)):
            stages.append(Upsample(chans[i + 1], chans[i]))
            stages += [ResBlock(chans[i]) for _ in range(depth)]
        self.stages = nn.Sequential(*stages)
        self.head = _head(chans[0], self.out_channels)

    def forward(self, z: Tensor) -> Tensor:
        """z (B, in_channels, h, w) -> (B, out_channels, h*f, w*f)."""
        z = z.contiguous(memory_format=torch.channels_last)
        return self.head(self.stages(self.stem(z))).contiguous()
