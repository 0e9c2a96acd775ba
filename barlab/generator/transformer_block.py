"""adaLN-Zero transformer block of the AR context model (paper §4.1).

    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = Linear(SiLU(c))      # c: (B, n, d), zero-init
    x = x + gate_a · Attention(modulate(RMSNorm(x), shift_a, scale_a))
    x = x + gate_m · SwiGLU(modulate(RMSNorm(x), shift_m, scale_m))          # hidden int(2/3·mlp_ratio·d)

The condition c is per slot (class embedding + that slot's learned "timestep" embedding).

Dropout (``dropout`` = the official ``proj_drop``, BAR-L 0.2) sits where the official block has it:
on the attention output projection and on the SwiGLU hidden layer (before w3), nowhere else.
``attn_dropout`` (dropout on the attention probabilities) is not in the official model (its
``attn_drop`` is built but never applied) and is off in every preset.
"""

from __future__ import annotations

from torch import Tensor, nn

from barlab.generator.attention import Attention
from barlab.generator.kv_cache import KVCache
from barlab.generator.layers import RMSNorm, SwiGLU, modulate
from barlab.generator.rope import Rotation


class Block(nn.Module):
    """x (B, n, d), c (B, n, d) -> (B, n, d)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = RMSNorm(width)
        self.attn = Attention(width, heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout, proj_dropout=dropout)
        self.norm2 = RMSNorm(width)
        self.mlp = SwiGLU(width, int(2 / 3 * mlp_ratio * width), dropout=dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.zero_init()

    def zero_init(self) -> None:
        """adaLN-Zero: modulation starts at 0, so every block starts as the identity."""
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, rotation: Rotation | None = None, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=-1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), rotation, cache, layer)
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
