"""Small building blocks shared by the generator backbone and the heads.

``RMSNorm``, ``SwiGLU``, ``modulate`` (adaLN) and ``GaussianFourier`` (embedding of a scalar such
as the MBM mask ratio). All are plain ``nn.Module``s / functions that act on the last dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim with a learned gain.

    Shapes: x (..., dim) -> (..., dim). Normalizes in fp32 and casts back to the input dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class SwiGLU(nn.Module):
    """Gated FFN: ``w3(dropout(silu(w1 x) * w2 x))``.

    Shapes: x (..., dim) -> (..., out or dim). ``hidden`` is given explicitly (callers compute
    e.g. ``int(2/3 * 4 * d)`` or ``int(8/3 * W)``). Three linears: dim->hidden twice, hidden->out.
    """

    def __init__(self, dim: int, hidden: int, out: int | None = None, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        out = dim if out is None else out
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, out, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(self.drop(F.silu(self.w1(x)) * self.w2(x)))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``; shift/scale broadcast against x (..., dim)."""
    return x * (1 + scale) + shift


class GaussianFourier(nn.Module):
    """Random Fourier features of a scalar: ``[sin(2π x w), cos(2π x w)]``, w ~ N(0, scale²) fixed.

    Shapes: x (N,) -> (N, 2 * num_freqs). The frequencies are a persistent buffer (saved in the
    state dict, never trained).
    """

    def __init__(self, num_freqs: int = 256, scale: float = 1.0):
        super().__init__()
        self.num_freqs = num_freqs
        self.register_buffer("freqs", torch.randn(num_freqs) * scale)

    @property
    def out_dim(self) -> int:
        return 2 * self.num_freqs

    def forward(self, x: Tensor) -> Tensor:
        proj = 2 * math.pi * rearrange(x.float(), "n -> n 1") * rearrange(self.freqs.float(), "f -> 1 f")
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
