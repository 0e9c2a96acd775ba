"""2D rotary position embedding with target-aware queries (paper §4.1, JiT-style, language freqs).

The head dim is split in two halves, one per grid axis (row, col). Each half uses the language-RoPE
frequencies ``base^(-2i / (head_dim/2))``, i = 0 .. head_dim/4 - 1, so one head rotates
``head_dim/2`` pairs ``(x[i], x[i + head_dim/2])`` by the angles ``[row·f, col·f]``.

Positions are indices into the L = h·w raster grid; index L is the identity rotation (prefix slots).
Keys always use the slot's current position. With ``target_aware`` the queries of the last
``heads // 2`` heads are rotated by the target (next) position instead.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn


class Rotation(NamedTuple):
    """cos/sin of the rotation angles for queries (B, H or 1, n, head_dim/2) and keys (B, 1, n, head_dim/2)."""

    q_cos: Tensor
    q_sin: Tensor
    k_cos: Tensor
    k_sin: Tensor


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]): x (B, H, n, D), cos/sin broadcastable to (B, H, n, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Rope2D(nn.Module):
    """Angle tables for a (h, w) grid; ``forward(current, target)`` -> ``Rotation``.

    current / target: (B, n) long in [0, L] (L = identity). The cos/sin tables (L + 1, head_dim/2)
    are non-persistent buffers computed in float64 at construction.
    """

    def __init__(self, head_dim: int, grid: tuple[int, int], heads: int, target_aware: bool = True,
                 base: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
        self.heads = heads
        self.target_heads = heads // 2 if target_aware else 0
        quarter = head_dim // 4
        freqs = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)     # (D/4,)
        h, w = grid
        rows = torch.arange(h * w, dtype=torch.float64) // w
        cols = torch.arange(h * w, dtype=torch.float64) % w
        angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # (L, D/2)
        angles = torch.cat([angles, angles.new_zeros(1, angles.shape[1])], dim=0)   # row L: identity
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, current: Tensor, target: Tensor) -> Rotation:
        k_cos = rearrange(self.cos[current], "b n d -> b 1 n d")
        k_sin = rearrange(self.sin[current], "b n d -> b 1 n d")
        if not self.target_heads:
            return Rotation(k_cos, k_sin, k_cos, k_sin)
        t_cos = rearrange(self.cos[target], "b n d -> b 1 n d")
        t_sin = rearrange(self.sin[target], "b n d -> b 1 n d")
        keep = self.heads - self.target_heads
        q_cos = torch.cat([k_cos.expand(-1, keep, -1, -1), t_cos.expand(-1, self.target_heads, -1, -1)], dim=1)
        q_sin = torch.cat([k_sin.expand(-1, keep, -1, -1), t_sin.expand(-1, self.target_heads, -1, -1)], dim=1)
        return Rotation(q_cos, q_sin, k_cos, k_sin)
