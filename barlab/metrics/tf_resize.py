"""Bilinear resize exactly as TensorFlow 1.x ``tf.image.resize_bilinear`` (align_corners=False,
no half-pixel centres), the resize inside the FID Inception graph (2015-12-05).

Output pixel ``o`` samples input coordinate ``o * in / out`` (not ``(o + 0.5) * in / out - 0.5`` as
``torch.nn.functional.interpolate`` does), so a plain ``F.interpolate`` shifts every image by up
to half a pixel against the reference implementation. The resize is a fixed linear map per axis:
``out = Wy @ x @ Wx^T``.
"""

from __future__ import annotations

import torch


def tf1_bilinear_matrix(in_size: int, out_size: int, dtype=torch.float64) -> torch.Tensor:
    """(out_size, in_size) interpolation matrix of TF1's legacy bilinear resize along one axis."""
    scale = in_size / out_size
    src = torch.arange(out_size, dtype=torch.float64) * scale
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo.double()
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    matrix.index_put_((rows, hi), frac, accumulate=True)
    return matrix.to(dtype)


def resize_tf1_bilinear(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """images (N, C, H, W) float → (N, C, size[0], size[1]), TF1 ``resize_bilinear`` semantics."""
    height, width = images.shape[-2:]
    if (height, width) == tuple(size):
        return images
    wy = tf1_bilinear_matrix(height, size[0], images.dtype).to(images.device)
    wx = tf1_bilinear_matrix(width, size[1], images.dtype).to(images.device)
    return torch.einsum("oh,nchw,pw->ncop", wy, images, wx)
