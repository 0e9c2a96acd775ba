"""Token shuffling: merge p x p neighbouring tokens into one AR step (paper §4.1, "BAR-B/p").

A (H, W) grid of k-bit tokens becomes an (H/p, W/p) grid of k·p² bits per step::

    shuffle:   'b (h sh w sw) k -> b (h w) (sh sw k)'
    unshuffle: 'b (h w) (sh sw k) -> b (h sh w sw) k'

Within a merged step the bits are laid out as (sh, sw, k): the p×p sub-tokens in raster order,
each with its k bits contiguous. p = 1 is the identity.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor

from barlab.errors import ConfigError
from barlab.utils.integers import check_int


def check_shuffle(grid: tuple[int, int], p: int) -> tuple[int, int]:
    """Validate ``p`` against the token grid (H, W); return the AR grid (H/p, W/p). Errors name ``p``."""
    p = check_int(p, "p", fix="p=1")
    height, width = (int(g) for g in grid)
    if height % p or width % p:
        raise ConfigError("p", f"factor {p} must divide the token grid {height}x{width}", fix="p=1")
    return height // p, width // p


def shuffle(bits: Tensor, grid: tuple[int, int], p: int) -> Tensor:
    """Merge p×p neighbouring tokens: bits (B, H·W, k) raster -> (B, (H/p)·(W/p), k·p²) raster."""
    h, w = check_shuffle(grid, p)
    if bits.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"bits have {bits.shape[1]} tokens, grid {tuple(grid)} needs {grid[0] * grid[1]}")
    return rearrange(bits, "b (h sh w sw) k -> b (h w) (sh sw k)", h=h, sh=p, w=w, sw=p)


def unshuffle(bits: Tensor, grid: tuple[int, int], p: int) -> Tensor:
    """Inverse of ``shuffle``: bits (B, (H/p)·(W/p), k·p²) -> (B, H·W, k); ``grid`` is the full (H, W)."""
    h, w = check_shuffle(grid, p)
    if bits.shape[1] != h * w or bits.shape[2] % (p * p):
        raise ValueError(f"bits of shape {tuple(bits.shape)} do not fit grid {tuple(grid)} with p={p}")
    return rearrange(bits, "b (h w) (sh sw k) -> b (h sh w sw) k", h=h, w=w, sh=p, sw=p)
