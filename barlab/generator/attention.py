"""Causal multi-head self-attention with qkv bias, per-head QK-RMSNorm, 2D RoPE and a KV cache.

Full (teacher-forced) sequences use ``scaled_dot_product_attention(is_causal=True)``. With a cache,
the n new slots attend to every filled slot before them plus themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from barlab.generator.kv_cache import KVCache
from barlab.generator.layers import RMSNorm
from barlab.generator.rope import Rotation, rotate


class Attention(nn.Module):
    """x (B, n, d) -> (B, n, d). ``heads`` must divide d.

    ``proj_dropout``: dropout on the output projection (the official ``proj_drop``).
    ``attn_dropout``: dropout on the attention probabilities; not part of the official model (0 in
    every preset), kept as an opt-in.
    """

    def __init__(self, width: int, heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(width, width)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: Tensor, rotation: Rotation | None = None, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        """x (B, n, d); rotation angles for these n slots; with ``cache`` the slots sit at
        [cache.length, cache.length + n) and K/V are written into block ``layer``'s buffers."""
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rotation is not None:
            q = rotate(q, rotation.q_cos, rotation.q_sin)
            k = rotate(k, rotation.k_cos, rotation.k_sin)
        offset = 0
        if cache is not None:
            offset = cache.length
            k, v = cache.append(layer, k, v)
        n = q.shape[2]
        mask, causal = None, False
        if offset == 0:
            causal = n > 1
        elif n > 1:  # a chunk after a filled prefix: slot i sees keys 0 .. offset + i
            keys = torch.arange(offset + n, device=x.device)
            mask = keys[None, :] <= (offset + torch.arange(n, device=x.device))[:, None]
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        return self.proj_drop(self.proj(rearrange(out, "b h n e -> b n (h e)")))
