"""Preallocated key/value cache for incremental (raster) decoding.

Per block one K and one V buffer of shape (B, heads, max_len, head_dim), filled in place from
slot 0 upwards; ``length`` is the number of slots written so far (the fill index). Nothing is
ever concatenated. The backbone also parks the per-sample class vector (B, d) here at prefill,
because every later step needs it for adaLN.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """K/V buffers for ``depth`` blocks: each (batch, heads, max_len, head_dim)."""

    def __init__(self, depth: int, batch: int, heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        shape = (batch, heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.max_len = max_len
        self.length = 0
        self.class_vec: Tensor | None = None

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, n, D) at slots [length, length + n) of ``layer``; return the filled
        views (B, H, length + n, D). ``length`` itself moves only in ``advance``."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} slots > max_len {self.max_len}")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more slots as filled (after every block has appended them)."""
        self.length += n

    def reset(self) -> None:
        """Forget everything (the buffers are kept and overwritten next time)."""
        self.length = 0
        self.class_vec = None
