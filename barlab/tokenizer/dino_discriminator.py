"""The official BAR discriminator ``DinoDisc``: a frozen DINO ViT-S/8 with five trainable 1-D conv heads.

The ViT is loaded from a local ``dino_vit_small_patch8_224.pth`` (huggingface.co/nyu-visionx/RAE-collections,
``discs/``); nothing is downloaded. Its state dict is loaded strictly: ``cls_token`` (1, 1, 384),
``pos_embed`` (1, 785, 384), ``patch_embed.proj.{weight,bias}``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}.{weight,bias}``, ``norm.{weight,bias}``; the k third of every ``attn.qkv.bias`` is zeroed at
load, as officially (softmax makes it a no-op anyway).

State-dict keys of :class:`DinoDiscriminator` (the heads only, as the official): for head i = 0..4,
``heads.i.0.0.{weight_orig,weight_u,weight_v,bias}`` (spectral Conv1d k=1), ``heads.i.0.1.{weight,bias}``
(BatchNormLocal), ``heads.i.1.fn.0.{weight_orig,weight_u,weight_v,bias}`` (spectral Conv1d k=9, circular),
``heads.i.1.fn.1.{weight,bias}``, ``heads.i.2.{weight_orig,weight_u,weight_v,bias}`` (spectral Conv1d C -> 1).

How the frozen ViT is kept out of the state dict yet follows the module: as officially, it sits in a
one-element tuple (``self._dino``), so it is not a submodule: not in ``state_dict()``, ``parameters()``
(so an optimiser or a ``requires_grad`` toggle over the discriminator's parameters never reaches it) nor
``train()``. Unlike the official (which pins it to ``device='cuda'`` at construction), :meth:`_apply` is
overridden so that ``.to(device)`` / ``.cuda()`` / ``.cpu()`` move it too; it keeps float32 whatever dtype the
heads are cast to (the official feeds it ``x.float()``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from barlab.errors import ConfigError
from barlab.tokenizer.perceptual import IMAGENET_MEAN, IMAGENET_STD
from barlab.tokenizer.pretrained import freeze, load_state_strict, read_state_file
from barlab.utils.integers import check_int

_DINO_FILE = ("DINO ViT-S/8 state dict (dino_vit_small_patch8_224.pth from huggingface.co/nyu-visionx/"
              "RAE-collections, discs/)")


# ---------------------------------------------------------------- frozen DINO ViT


class _Attention(nn.Module):
    """Multi-head self-attention, x (B, L, D) -> (B, L, D); keys ``qkv``, ``proj``; scale head_dim^-0.5."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h c) -> three b h l c", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(rearrange(out, "b h l c -> b l (h c)"))


class _Mlp(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2, (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm ViT block without dropout: x + attn(norm1(x)), then + mlp(norm2(x)); (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, round(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    """Conv patchify, (B, 3, S, S) -> (B, (S/p)^2, D); key ``proj``."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class FrozenDinoViT(nn.Module):
    """The official ``FrozenDINOSmallNoDrop``: image (B, 3, H, W) in [-1, 1] -> activations, each (B, D, L).

    Input: ``x * x_scale + x_shift`` (= ImageNet normalisation of (x + 1) / 2), in float32. Then to img_size:
    if H and W > img_size, with probability 0.5 a random img_size crop (one for the whole batch), else a resize
    (``area`` if H > img_size else ``bicubic``, as officially the mode looks at H only). Patch embedding, cls
    token, pos_embed; the readout ``(tokens[:, 1:] + tokens[:, :1])`` transposed to (B, D, L), L = (img_size /
    patch)^2, is taken before the blocks and after each block in ``key_depths``. The final ``norm`` is loaded
    but unused (as officially). LayerNorm eps ``norm_eps``, MLP GELU-tanh, attention scale head_dim^-0.5.

    The random choices: the official draws the coin with python's ``random.random() <= 0.5`` and the crop with
    ``RandomCrop.get_params`` (top = ``torch.randint(0, H - S + 1, (1,))``, then left likewise). Here the coin
    is ``torch.rand(()) <= 0.5`` from the same torch RNG (or ``generator``) as the crop offsets; ``crop``
    forces the branch (True: crop, needs H and W > img_size; False: resize).

    Always frozen (requires_grad False, eval). Sizes are arguments so tests can use tiny ViTs.
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 8, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, mlp_ratio: float = 4.0, key_depths: Sequence[int] = (2, 5, 8, 11),
                 norm_eps: float = 1e-6):
        super().__init__()
        self.img_size = check_int(img_size, "img_size", fix="img_size=224")
        self.patch_size = check_int(patch_size, "patch_size", fix="patch_size=8")
        self.embed_dim = check_int(embed_dim, "embed_dim", fix="embed_dim=384")
        depth = check_int(depth, "depth", fix="depth=12")
        num_heads = check_int(num_heads, "num_heads", fix="num_heads=6")
        if self.img_size % self.patch_size or self.embed_dim % num_heads:
            raise ConfigError("patch_size", f"img_size {img_size} must be a multiple of patch_size {patch_size} "
                              f"and embed_dim {embed_dim} of num_heads {num_heads}", fix="patch_size=8")
        keys = [check_int(d, "key_depths", minimum=0, fix="key_depths=[2,5,8,11]") for d in key_depths]
        self.key_depths = tuple(sorted({d for d in keys if d < depth}))  # as officially, deeper ones are dropped
        grid = self.img_size // self.patch_size
        m, s = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("x_scale", (0.5 / s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - m) / s).view(1, 3, 1, 1), persistent=False)
        self.patch_embed = _PatchEmbed(self.patch_size, self.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, self.embed_dim))
        self.blocks = nn.Sequential(*[_Block(self.embed_dim, num_heads, mlp_ratio, norm_eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(self.embed_dim, eps=norm_eps)
        freeze(self)

    def train(self, mode: bool = True) -> FrozenDinoViT:
        """Always stays in eval mode (the network is frozen)."""
        return super().train(False)

    def to_input_size(self, x: Tensor, crop: bool | None = None, generator: torch.Generator | None = None) -> Tensor:
        """x (B, 3, H, W) in [-1, 1] -> normalised (B, 3, img_size, img_size), float32 (see the class docstring)."""
        s = self.img_size
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.x_scale * x.float() + self.x_shift
            h, w = x.shape[-2:]
            larger = h > s and w > s
            if crop and not larger:
                raise ValueError(f"crop=True needs an image larger than {s}x{s}, got {h}x{w}")
            if larger and (bool(torch.rand((), generator=generator) <= 0.5) if crop is None else crop):
                top = int(torch.randint(0, h - s + 1, size=(1,), generator=generator).item())
                left = int(torch.randint(0, w - s + 1, size=(1,), generator=generator).item())
                return x[..., top:top + s, left:left + s]
            return F.interpolate(x, size=(s, s), mode="area" if h > s else "bicubic")

    def forward(self, x: Tensor, crop: bool | None = None, generator: torch.Generator | None = None) -> list[Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> 1 + len(key_depths) activations, each (B, embed_dim, L) float32."""
        x = self.patch_embed(self.to_input_size(x, crop, generator))
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.float()], dim=1) + self.pos_embed
            acts = [(x[:, 1:] + x[:, :1]).transpose(1, 2)]
        last = self.key_depths[-1] if self.key_depths else -1
        for i, block in enumerate(self.blocks):
            if i > last:
                break  # later blocks feed no activation (the official runs them for nothing)
            x = block(x)
            if i in self.key_depths:
                acts.append((x[:, 1:].float() + x[:, :1].float()).transpose(1, 2))
        return acts


def load_frozen_dino(dino_path: str | os.PathLike | None, knob: str = "dino_path", **sizes) -> FrozenDinoViT:
    """A FrozenDinoViT(**sizes) loaded strictly from a local file, k part of each qkv bias zeroed.

    A missing, unreadable or mismatching file (missing/unexpected keys, wrong shapes, e.g. a patch-16 file's
    pos_embed) is one ConfigError line on ``knob`` naming the file and what to download.
    """
    fix = f"{knob}=<that file>"
    state = read_state_file(dino_path, knob, user="the DINO discriminator", expected=_DINO_FILE, fix=fix)
    model = FrozenDinoViT(**sizes)
    state = dict(state)
    for key in state:
        if key.endswith(".attn.qkv.bias"):
            bias = state[key].clone()
            third = bias.numel() // 3
            bias[third:2 * third] = 0
            state[key] = bias
    load_state_strict(model, state, dino_path, knob, expected=_DINO_FILE, fix=fix)
    return freeze(model)


# ---------------------------------------------------------------- trainable heads


class BatchNormLocal(nn.Module):
    """Batch norm over virtual batches, always with the current batch's statistics (no running stats).

    x (B, C, L) -> float32 (B, C, L). As officially: G = ceil(B / virtual_bs) groups of B / G consecutive
    samples (B must be divisible by G: B = 10 gives two groups of 5, B = 9 is refused); per group and channel,
    mean and biased variance over (samples of the group, L); ``(x - mean) / sqrt(var + eps)``, then
    ``* weight + bias`` per channel. Keys ``weight``, ``bias`` (C,).
    """

    def __init__(self, channels: int, virtual_bs: int = 8, eps: float = 1e-6):
        super().__init__()
        self.virtual_bs = check_int(virtual_bs, "virtual_bs", fix="virtual_bs=8")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, L) -> (B, C, L) float32."""
        b = x.shape[0]
        groups = math.ceil(b / self.virtual_bs)
        if b % groups:
            raise ValueError(f"BatchNormLocal: batch {b} does not split into {groups} equal groups "
                             f"(virtual_bs {self.virtual_bs})")
        x = rearrange(x.float(), "(g n) c l -> g n c l", g=groups)
        mean = x.mean(dim=(1, 3), keepdim=True)
        var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + self.eps)
        x = x * self.weight[:, None] + self.bias[:, None]
        return rearrange(x, "g n c l -> (g n) c l")


class ResidualBlock(nn.Module):
    """(fn(x) + x) / sqrt(2), same shape; key prefix ``fn``."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return (self.fn(x) + x) * (1 / math.sqrt(2))


def spectral_conv1d(c_in: int, c_out: int, kernel_size: int, **kwargs) -> nn.Conv1d:
    """Conv1d with torch.nn.utils.spectral_norm(n_power_iterations=1, eps=1e-12, dim=0):
    keys ``weight_orig``, ``weight_u``, ``weight_v``, ``bias``."""
    conv = nn.Conv1d(c_in, c_out, kernel_size, **kwargs)
    return nn.utils.spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)


def _head_block(channels: int, kernel_size: int, virtual_bs: int, eps: float) -> nn.Sequential:
    return nn.Sequential(
        spectral_conv1d(channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular"),
        BatchNormLocal(channels, virtual_bs=virtual_bs, eps=eps),
        nn.LeakyReLU(0.2),
    )


def build_dino_heads(channels: int = 384, count: int = 5, kernel_size: int = 9, virtual_bs: int = 8,
                     norm_eps: float = 1e-6) -> nn.ModuleList:
    """``count`` heads, each (B, C, L) -> (B, 1, L): Sequential(block(k=1), ResidualBlock(block(k=kernel_size)),
    spectral Conv1d(C, 1, 1)), block = Sequential(spectral Conv1d(C, C, k, padding k//2, circular),
    BatchNormLocal, LeakyReLU(0.2))."""
    kernel_size = check_int(kernel_size, "kernel_size", fix="kernel_size=9")
    return nn.ModuleList([
        nn.Sequential(
            _head_block(channels, 1, virtual_bs, norm_eps),
            ResidualBlock(_head_block(channels, kernel_size, virtual_bs, norm_eps)),
            spectral_conv1d(channels, 1, 1),
        )
        for _ in range(count)
    ])


class DinoDiscriminator(nn.Module):
    """Official ``DinoDisc`` (norm 'bn', spectral norm): image (B, 3, H, W) in [-1, 1] -> logits (B, n * L).

    The frozen DINO ViT gives n = 1 + len(key_depths) activations (B, D, L) (see :class:`FrozenDinoViT`); head i
    maps activation i to (B, 1, L) in float32 with autocast off (the official forces float32 autocast); the
    logits are the heads' outputs flattened and concatenated, (B, 5 * 784) at full size. B must split into
    equal virtual batches (see :class:`BatchNormLocal`). Gradients reach the input through the frozen ViT.
    The ViT is outside the state dict and parameters but follows ``.to(device)`` (module docstring).

    Args:
        dino_path: local ``dino_vit_small_patch8_224.pth``.
        kernel_size: the residual head conv's kernel (9). virtual_bs, norm_eps: BatchNormLocal's (8, 1e-6).
        img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, key_depths: the ViT (ViT-S/8 at 224,
            key depths 2, 5, 8, 11); tiny values for tests.
    """

    def __init__(self, dino_path: str | os.PathLike | None, *, kernel_size: int = 9, virtual_bs: int = 8,
                 norm_eps: float = 1e-6, img_size: int = 224, patch_size: int = 8, embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 key_depths: Sequence[int] = (2, 5, 8, 11)):
        super().__init__()
        dino = load_frozen_dino(dino_path, img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
                                depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, key_depths=key_depths,
                                norm_eps=norm_eps)
        self._dino: tuple[FrozenDinoViT] = (dino,)
        self.heads = build_dino_heads(dino.embed_dim, 1 + len(dino.key_depths), kernel_size, virtual_bs, norm_eps)

    @property
    def dino(self) -> FrozenDinoViT:
        """The frozen ViT (not a submodule)."""
        return self._dino[0]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        super()._apply(fn, recurse)
        device = self.heads[0][2].bias.device
        if device.type != "meta":
            self._dino[0].to(device=device)
        return self

    def forward(self, x: Tensor, crop: bool | None = None, generator: torch.Generator | None = None) -> Tensor:
        """x (B, 3, H, W) in [-1, 1] -> logits (B, (1 + len(key_depths)) * L) float32."""
        acts = self.dino(x.float(), crop=crop, generator=generator)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.cat([head(act.float()).flatten(1) for head, act in zip(self.heads, acts)], dim=1)


# ---------------------------------------------------------------- official GAN steps


def discriminator_fake_input(reconstructions: Tensor) -> Tensor:
    """The official discriminator-step fake images: detached, clamped to [-1, 1], rounded to 8 bits,
    ``round((x + 1) * 127.5) / 127.5 - 1``; same shape."""
    x = reconstructions.detach().clamp(-1.0, 1.0)
    return torch.round((x + 1.0) * 127.5) / 127.5 - 1.0
