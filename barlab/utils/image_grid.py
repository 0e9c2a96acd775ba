"""Image tensors to PNG grids (PIL + torch + einops; no torchvision)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from barlab.utils.io import atomic_write_bytes


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map float images in [-1, 1] to uint8 in [0, 255], rounding (never truncating).

    images: (..., C, H, W) float. Returns the same shape, dtype uint8.
    """
    scaled = (images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile images into one picture.

    images: (N, C, H, W) float in [-1, 1] or uint8, C in {1, 3}.
    nrow: images per row. Returns an (rows*(H+p)+p, nrow*(W+p)+p, 3) uint8 array.
    """
    if images.dtype != torch.uint8:
        images = float_to_uint8(images)
    images = images.cpu()
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(n, 3, h, w)
    rows = -(-n // nrow)
    blank = torch.full((rows * nrow - n, 3, h, w), pad_value, dtype=torch.uint8)
    images = torch.cat([images, blank])
    images = torch.nn.functional.pad(images, (padding, 0, padding, 0), value=pad_value)
    grid = rearrange(images, "(r n) c h w -> (r h) (n w) c", r=rows, n=nrow)
    grid = torch.nn.functional.pad(grid, (0, 0, 0, padding, 0, padding), value=pad_value)
    return grid.numpy()


def upscale(grid: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W, 3) uint8 array, for tiny images."""
    if factor <= 1:
        return grid
    return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 array as PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
