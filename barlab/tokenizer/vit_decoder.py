"""BAR-FSQ ViT decoder (the official ``SigLIP2Decoder``) with its distillation projector, in plain torch.

latent (B, W, h, w) -> tokens (B, h*w, W), a class token in front, learnt positions, ``ln_pre``,
``depth`` pre-LayerNorm blocks, ``ln_post`` on the image tokens, a 1x1 conv to p*p*C channels and a
pixel shuffle to (B, C, h*p, w*p), then a 3x3 conv C -> C (``conv_out``). Defaults are the official
ViT-L: width 1024, 24 blocks, 16 heads, MLP ratio 4, patch 16; LayerNorm eps 1e-5 (torch's default,
as officially), GELU exact, fused qkv with bias.

Distillation (official ``clip_align``): the image tokens after block ``distill_layer`` (0-based; the
official ``clip_align_layer_id`` is 2, the third block) go through ``distill_projector``
Linear(W, 2048) -> SiLU -> Linear(2048, 2048) -> SiLU -> Linear(2048, distill_dim = 1152), the
prediction of the frozen SigLIP2 features.

State-dict keys (``N`` = 0 .. depth - 1, R = int(W * mlp_ratio)), the official ``decoder.*`` names less the
prefix except where noted (e.g. official ``decoder.transformer.N.attn.qkv`` -> ``transformer.N.attn.qkv``)::

    class_embedding (1, W), positional_embedding (h*w + 1, W)
    ln_pre.{weight, bias}
    transformer.N.norm1.{weight, bias}
    transformer.N.attn.qkv.{weight (3W, W), bias (3W,)}, transformer.N.attn.proj.{weight (W, W), bias (W,)}
    transformer.N.norm2.{weight, bias}
    transformer.N.mlp.fc1.{weight (R, W), bias (R,)}, transformer.N.mlp.fc2.{weight (W, R), bias (W,)}
    ln_post.{weight, bias}
    ffn.0.{weight (p*p*C, W, 1, 1), bias (p*p*C,)}
    conv_out.{weight (C, C, 3, 3), bias (C,)}
    distill_projector.{0, 2, 4}.{weight, bias}        official: clip_projector.{0, 2, 4}.{weight, bias}

so an official decoder state dict loads after ``map_official_decoder_keys`` (renames ``clip_projector.``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.utils.integers import check_int

OFFICIAL_KEY_PREFIXES = {"clip_projector.": "distill_projector."}


def map_official_decoder_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An official ``SigLIP2Decoder`` state dict (keys without the ``decoder.`` prefix) -> ``ViTDecoder`` keys."""
    out = {}
    for key, value in state.items():
        for old, new in OFFICIAL_KEY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


def _grid(grid: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(grid, (tuple, list)) and len(grid) == 2:
        return tuple(check_int(g, "grid", fix="grid=16") for g in grid)
    side = check_int(grid, "grid", fix="grid=16")
    return side, side


class DecoderAttention(nn.Module):
    """The official ``Attention`` as the decoder uses it: (B, L, W) -> (B, L, W).

    Self-attention with a fused ``qkv`` Linear (bias) and ``proj``, no mask, no q/k norm, no RoPE.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, W) -> (B, L, W); scale head_dim^-0.5 (SDPA's default, as officially)."""
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class DecoderMlp(nn.Module):
    """fc1 (W -> R), GELU (exact), fc2 (R -> W): timm's ``Mlp`` with its defaults; (B, L, W) -> (B, L, W)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, W) -> (B, L, W)."""
        return self.fc2(self.act(self.fc1(x)))


class DecoderBlock(nn.Module):
    """The official ``Block`` as the decoder uses it (LayerNorm, no AdaLN): (B, L, W) -> (B, L, W).

    Pre-LayerNorm: x + attn(norm1(x)), then + mlp(norm2(x)).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = DecoderAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = DecoderMlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, W) -> (B, L, W)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTDecoder(nn.Module):
    """BAR-FSQ decoder: latent (B, W, h, w) -> image (B, C, h*p, w*p), unbounded; see the module docstring.

    Weights are initialised as officially (``BAR_FSQ._init_weights``): every Linear and Conv weight
    trunc_normal(std 0.02), biases zero, LayerNorms ones / zeros; ``class_embedding`` and
    ``positional_embedding`` W^-0.5 * randn.

    Attributes ``in_channels`` (= width W), ``upsample`` (= p) and ``out_channels`` (= C), as
    ``Tokenizer`` expects.

    Args:
        grid: the token grid, an int h = w or (h, w); the positional embedding has h*w + 1 rows
            (officially crop_size // patch_size = 16).
        width: W, the token width and the decoder's input channels.
        depth: number of blocks.
        heads: attention heads; must divide W.
        mlp_ratio: the MLP's hidden width is int(W * mlp_ratio).
        patch_size: p, pixels per token side.
        out_channels: C, image channels.
        distill_dim: width of the distillation prediction (the teacher's width, 1152); None or 0 builds
            no projector.
        distill_layer: 0-based block after which the projector reads the tokens (official 2).
        distill_hidden: the projector's hidden width (official 2048).
    """

    def __init__(self, grid: int | tuple[int, int] = 16, width: int = 1024, depth: int = 24, heads: int = 16,
                 mlp_ratio: float = 4.0, patch_size: int = 16, out_channels: int = 3,
                 distill_dim: int | None = 1152, distill_layer: int = 2, distill_hidden: int = 2048):
        super().__init__()
        self.grid = _grid(grid)
        self.width = check_int(width, "width", fix="width=1024")
        self.depth = check_int(depth, "depth", fix="depth=24")
        self.heads = check_int(heads, "heads", fix="heads=16")
        if self.width % self.heads:
            raise ConfigError("heads", f"must divide the width {self.width}, got {self.heads}", fix="heads=16")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or int(self.width * mlp_ratio) < 1:
            raise ConfigError("mlp_ratio", f"must be a positive number, got {mlp_ratio!r}", fix="mlp_ratio=4.0")
        self.patch_size = check_int(patch_size, "patch_size", fix="patch_size=16")
        self.in_channels = self.width
        self.upsample = self.patch_size
        self.out_channels = check_int(out_channels, "out_channels", fix="out_channels=3")
        self.distill_dim = check_int(distill_dim, "distill_dim", minimum=0, fix="distill_dim=1152", allow_none=True)
        self.distill_dim = self.distill_dim or 0
        self.distill_layer = check_int(distill_layer, "distill_layer", minimum=0, fix="distill_layer=2")
        if self.distill_dim and self.distill_layer >= self.depth:
            raise ConfigError("distill_layer", f"must be a block index below depth={self.depth}, got "
                              f"{self.distill_layer}", fix=f"distill_layer={min(2, self.depth - 1)}")
        hidden = check_int(distill_hidden, "distill_hidden", fix="distill_hidden=2048")

        scale = self.width ** -0.5
        num_tokens = self.grid[0] * self.grid[1]
        self.class_embedding = nn.Parameter(scale * torch.randn(1, self.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_tokens + 1, self.width))
        self.ln_pre = nn.LayerNorm(self.width)
        self.transformer = nn.ModuleList(DecoderBlock(self.width, self.heads, mlp_ratio) for _ in range(self.depth))
        self.ln_post = nn.LayerNorm(self.width)
        p = self.patch_size
        self.ffn = nn.Sequential(
            nn.Conv2d(self.width, p * p * self.out_channels, kernel_size=1),
            Rearrange("b (p1 p2 c) h w -> b c (h p1) (w p2)", p1=p, p2=p),
        )
        self.conv_out = nn.Conv2d(self.out_channels, self.out_channels, kernel_size=3, padding=1)
        self.distill_projector = nn.Sequential(
            nn.Linear(self.width, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, self.distill_dim),
        ) if self.distill_dim else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _run(self, latent: Tensor, distill: bool) -> tuple[Tensor, Tensor | None]:
        if latent.ndim != 4 or latent.shape[1] != self.width or tuple(latent.shape[-2:]) != self.grid:
            h, w = self.grid
            raise ConfigError("grid", f"the decoder takes latents of shape (B, {self.width}, {h}, {w}), got "
                              f"{tuple(latent.shape)}", fix=f"grid={list(latent.shape[-2:])}")
        h, w = self.grid
        x = rearrange(latent, "b d h w -> b (h w) d")
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        prediction = None
        for index, block in enumerate(self.transformer):
            x = block(x)
            if distill and index == self.distill_layer:
                prediction = self.distill_projector(x[:, 1:])
        x = self.ln_post(x[:, 1:])
        x = rearrange(x, "b (h w) d -> b d h w", h=h, w=w).contiguous()
        return self.conv_out(self.ffn(x)), prediction

    def forward(self, latent: Tensor) -> Tensor:
        """latent (B, W, h, w) -> image (B, C, h*p, w*p); the projector is not run."""
        return self._run(latent, distill=False)[0]

    def forward_with_distillation(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """latent (B, W, h, w) -> (image (B, C, h*p, w*p), prediction (B, h*w, distill_dim), raster order)."""
        if self.distill_projector is None:
            raise ConfigError("distill_dim", "is 0: this decoder has no distillation projector",
                              fix="distill_dim=1152")
        image, prediction = self._run(latent, distill=True)
        return image, prediction
