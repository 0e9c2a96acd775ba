"""SigLIP2 vision tower (the BAR-FSQ encoder and its distillation teacher), written in plain torch.

Equal to Hugging Face's ``Siglip2VisionTransformer`` (transformers 4.56, the version the official BAR
code pins) without its attention-pooling head, and loading its state dict strictly. Defaults are
``google/siglip2-so400m-patch16-naflex``: width 1152, 27 layers, 16 heads, MLP 4304, patch 16,
a 16 x 16 table of learnt positions, LayerNorm eps 1e-6, GELU with the tanh approximation.

State-dict keys (``N`` = 0 .. depth - 1), the HF ``vision_model.*`` keys less the prefix::

    embeddings.patch_embedding.{weight (D, C*p*p), bias (D,)}
    embeddings.position_embedding.weight (num_patches, D)
    encoder.layers.N.layer_norm1.{weight, bias}
    encoder.layers.N.self_attn.{q_proj, k_proj, v_proj, out_proj}.{weight (D, D), bias (D,)}
    encoder.layers.N.layer_norm2.{weight, bias}
    encoder.layers.N.mlp.fc1.{weight (M, D), bias (M,)}, encoder.layers.N.mlp.fc2.{weight (D, M), bias (D,)}
    post_layernorm.{weight, bias}

The pretrained weights come from a local HF model folder (``config.json`` + ``model.safetensors`` or a
sharded index), a ``.safetensors`` file or a torch state dict; nothing is downloaded.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.tokenizer.pretrained import freeze, load_state_strict, read_folder_config, read_weights
from barlab.utils.integers import check_int

HF_MODEL = "google/siglip2-so400m-patch16-naflex"
_KNOB = "weights_path"
_USER = "the SigLIP2 tower"
_EXPECTED = f"{HF_MODEL} folder (config.json, model.safetensors) or its state dict"
_FIX = f"{_KNOB}=<local folder of {HF_MODEL}>"
_PREFIX = "vision_model."
_HEAD = "head."
# keys of the full SigLIP2 model that are not the vision tower: never read from disk
_OTHER_TOWERS = ("text_model.", _PREFIX + _HEAD)
_OTHER_KEYS = ("logit_scale", "logit_bias")
# Siglip2VisionConfig field -> (argument of the modules here, HF default: config.json omits defaults)
_HF_FIELDS = {
    "hidden_size": ("width", 768),
    "intermediate_size": ("mlp_dim", 3072),
    "num_hidden_layers": ("depth", 12),
    "num_attention_heads": ("heads", 12),
    "num_channels": ("in_channels", 3),
    "patch_size": ("patch_size", 16),
    "num_patches": ("num_patches", 256),
    "layer_norm_eps": ("eps", 1e-6),
}
_HF_ACT = "gelu_pytorch_tanh"


def resize_positions(table: Tensor, grid: tuple[int, int]) -> Tensor:
    """Learnt positions (S*S, D), an S x S raster grid -> (h*w, D) for an h x w token grid, raster order.

    As HF's ``Siglip2VisionEmbeddings.resize_positional_embeddings``: the grid is resized with
    ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)`` in float32 and cast back to
    the table's dtype. For (h, w) = (S, S) this is the identity up to float32 rounding of the
    interpolation weights (tests/test_paper_tokenizer_parts.py measures it).
    """
    side = math.isqrt(table.shape[0])
    image = rearrange(table, "(s1 s2) d -> 1 d s1 s2", s1=side, s2=side).float()
    resized = F.interpolate(image, size=tuple(grid), mode="bilinear", align_corners=False, antialias=True)
    return rearrange(resized, "1 d h w -> (h w) d").to(table.dtype)


class SigLIP2Embeddings(nn.Module):
    """Patches -> tokens: x (B, C, H, W) -> (B, h*w, D), h = H / p, w = W / p, raster order.

    Patches are flattened ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)`` (as the official BAR encoder does
    before HF's NaFlex embedding), projected by ``patch_embedding`` (Linear C*p*p -> D), and get the
    learnt positions resized to the token grid (``resize_positions``).
    """

    def __init__(self, in_channels: int, patch_size: int, width: int, num_patches: int):
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.patch_embedding = nn.Linear(in_channels * patch_size * patch_size, width)
        self.position_embedding = nn.Embedding(num_patches, width)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> tokens (B, h*w, D)."""
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2] % p or x.shape[-1] % p:
            raise ConfigError("image_size", f"the SigLIP2 tower takes (B, {self.in_channels}, H, W) images with H "
                              f"and W multiples of {p}, got {tuple(x.shape)}", fix=f"image_size={16 * p}")
        h, w = x.shape[-2] // p, x.shape[-1] // p
        patches = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        tokens = self.patch_embedding(patches.to(self.patch_embedding.weight.dtype))
        return tokens + resize_positions(self.position_embedding.weight, (h, w))


class SigLIP2Attention(nn.Module):
    """Multi-head self-attention, no mask: (B, L, D) -> (B, L, D), scale head_dim^-0.5."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        q, k, v = (rearrange(proj(x), "b l (h d) -> b h l d", h=self.heads)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class SigLIP2MLP(nn.Module):
    """fc1 (D -> M), GELU (tanh approximation), fc2 (M -> D): (B, L, D) -> (B, L, D)."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SigLIP2Layer(nn.Module):
    """Pre-LayerNorm transformer layer: x + attn(ln1(x)), then + mlp(ln2(x)); (B, L, D) -> (B, L, D)."""

    def __init__(self, width: int, heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = SigLIP2Attention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = SigLIP2MLP(width, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SigLIP2LayerStack(nn.Module):
    """The ``encoder`` of the HF layout: ``layers``, a ModuleList of ``SigLIP2Layer``; (B, L, D) -> (B, L, D)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(SigLIP2Layer(width, heads, mlp_dim, eps) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        for layer in self.layers:
            x = layer(x)
        return x


class SigLIP2Tower(nn.Module):
    """SigLIP2 vision tower without head: x (B, C, H, W) in [-1, 1] -> features (B, h*w, D), raster order.

    ``embeddings`` -> ``encoder.layers`` -> ``post_layernorm``; the key layout is in the module docstring.
    Images in [-1, 1] are what the SigLIP2 processor gives (mean 0.5, std 0.5), so none is normalised here.
    The weights are torch's defaults until ``load_pretrained``.

    Args:
        in_channels: C.
        patch_size: p, the side of one patch (and the downsample factor).
        width: D.
        depth: number of layers.
        heads: attention heads; must divide D.
        mlp_dim: M, the MLP's hidden width.
        num_patches: rows of the learnt position table, a square S*S.
        eps: LayerNorm epsilon.
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 16, width: int = 1152, depth: int = 27,
                 heads: int = 16, mlp_dim: int = 4304, num_patches: int = 256, eps: float = 1e-6):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", fix="in_channels=3")
        self.patch_size = check_int(patch_size, "patch_size", fix="patch_size=16")
        self.width = check_int(width, "width", fix="width=1152")
        self.depth = check_int(depth, "depth", fix="depth=27")
        self.heads = check_int(heads, "heads", fix="heads=16")
        self.mlp_dim = check_int(mlp_dim, "mlp_dim", fix="mlp_dim=4304")
        self.num_patches = check_int(num_patches, "num_patches", fix="num_patches=256")
        if self.width % self.heads:
            raise ConfigError("heads", f"must divide the width {self.width}, got {self.heads}", fix="heads=16")
        if math.isqrt(self.num_patches) ** 2 != self.num_patches:
            raise ConfigError("num_patches", f"must be a square (the positions form an S x S grid), got "
                              f"{self.num_patches}", fix="num_patches=256")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ConfigError("eps", f"must be a positive number, got {eps!r}", fix="eps=1e-6")
        self.eps = float(eps)
        self.embeddings = SigLIP2Embeddings(self.in_channels, self.patch_size, self.width, self.num_patches)
        self.encoder = SigLIP2LayerStack(self.width, self.depth, self.heads, self.mlp_dim, self.eps)
        self.post_layernorm = nn.LayerNorm(self.width, eps=self.eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [-1, 1] -> features (B, h*w, D), h = H / p, w = W / p, raster order."""
        return self.post_layernorm(self.encoder(self.embeddings(x)))

    def sizes(self) -> dict[str, int | float]:
        """The constructor's size arguments, by name."""
        return {arg: getattr(self, arg) for arg, _ in _HF_FIELDS.values()}

    def _size_text(self) -> str:
        return ", ".join(f"{arg}={value}" for arg, value in self.sizes().items())

    def _check_config(self, weights_path: str | os.PathLike) -> None:
        config = read_folder_config(weights_path, _KNOB, fix=_FIX)
        if config is None:
            return
        if isinstance(config.get("vision_config"), dict):  # a Siglip2Config; else a plain vision config
            config = config["vision_config"]
        sizes = self.sizes()
        for field, (arg, default) in _HF_FIELDS.items():
            value = config.get(field, default)
            if value != sizes[arg]:
                raise ConfigError(_KNOB, f"{os.fspath(weights_path)!r}: config.json gives {field}={value!r} but this "
                                  f"SigLIP2 tower has {arg}={sizes[arg]!r}", fix=f"{arg}={value!r} or another folder")
        act = config.get("hidden_act", _HF_ACT)
        if act != _HF_ACT:
            raise ConfigError(_KNOB, f"{os.fspath(weights_path)!r}: config.json gives hidden_act={act!r}, this "
                              f"SigLIP2 tower has {_HF_ACT!r}", fix=_FIX)

    @torch.no_grad()
    def load_pretrained(self, weights_path: str | os.PathLike | None) -> SigLIP2Tower:
        """Copy the pretrained tower (embeddings, layers, post-LN) from a local file or HF folder; returns self.

        Reads ``vision_model.*`` of a full SigLIP2 checkpoint (``text_model.*``, ``logit_scale`` and
        ``logit_bias`` are other towers and are not read) or, if no key has that prefix, a plain tower
        state dict. The attention-pooling head (``head.*``, unused by BAR) is dropped explicitly; every
        other key must match: a missing, unexpected or mis-shaped key raises ConfigError on
        ``weights_path`` naming it. A folder's ``config.json`` must give this module's sizes (HF defaults
        for the fields it omits). ``requires_grad`` is left as it is.
        """
        self._check_config(weights_path)

        def keep(key: str) -> bool:
            return not key.startswith(_OTHER_TOWERS) and key not in _OTHER_KEYS

        state = read_weights(weights_path, _KNOB, user=_USER, expected=_EXPECTED, fix=_FIX, keep=keep)
        if any(key.startswith(_PREFIX) for key in state):
            state = {key[len(_PREFIX):]: value for key, value in state.items() if key.startswith(_PREFIX)}
        state = {key: value for key, value in state.items() if not key.startswith(_HEAD)}
        load_state_strict(self, state, weights_path, _KNOB, expected=f"SigLIP2 vision tower of these sizes "
                          f"({HF_MODEL}: {self._size_text()})", fix=_FIX)
        return self


class SigLIP2Encoder(SigLIP2Tower):
    """BAR-FSQ encoder: x (B, C, H, W) in [-1, 1] -> latent grid (B, D, H/p, W/p).

    A ``SigLIP2Tower`` whose ``embeddings`` are frozen (requires_grad False, always eval; they stay in
    the state dict because encoding needs them) and whose layers and post-LayerNorm train. Attributes
    ``downsample`` = p and ``out_channels`` = D, as ``Tokenizer`` expects.

    Officially (``modeling/modules/blocks.py``, ``SigLIP2Encoder``) the frozen stack (the distillation
    teacher) and the trainable stack read the output of one shared frozen embedding module. Here the
    teacher (``SigLIP2Teacher``) holds its own copy of the same frozen embeddings, loaded from the same
    file; identical frozen weights give identical embeddings, so that is the same computation.

    Officially ``BAR_FSQ`` builds and initialises the decoder first and loads the encoder afterwards, so
    the encoder's weights are exactly the pretrained ones: call ``load_pretrained`` and apply no weight
    init to this module after it. Officially the encoder trains with a 0.1x learning rate
    (``encoder_lr_mult``), which is the optimiser's business, not this module's.

    Args: as ``SigLIP2Tower``.
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 16, width: int = 1152, depth: int = 27,
                 heads: int = 16, mlp_dim: int = 4304, num_patches: int = 256, eps: float = 1e-6):
        super().__init__(in_channels, patch_size, width, depth, heads, mlp_dim, num_patches, eps)
        self.downsample = self.patch_size
        self.out_channels = self.width
        self.embeddings.requires_grad_(False)
        self.embeddings.eval()

    def train(self, mode: bool = True) -> SigLIP2Encoder:
        """Layers and post-LN follow ``mode``; the frozen embeddings stay in eval mode."""
        super().train(mode)
        self.embeddings.train(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [-1, 1] -> latent (B, D, H/p, W/p)."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return rearrange(super().forward(x), "b (h w) d -> b d h w", h=h, w=w).contiguous()


class SigLIP2Teacher(SigLIP2Tower):
    """Frozen SigLIP2 tower giving the distillation targets: x (B, C, H, W) in [-1, 1] -> (B, h*w, D), raster order.

    Loaded from ``weights_path`` at construction (the same file as the encoder's ``load_pretrained``);
    every parameter has requires_grad False and the module always stays in eval mode. Gradients
    still flow to its input. See ``SigLIP2Encoder`` on the official shared embedding module.

    Args:
        weights_path: local HF folder / safetensors file / torch state dict of the tower (see
            ``SigLIP2Tower.load_pretrained``); None or a missing path raises ConfigError.
        others: as ``SigLIP2Tower``.
    """

    def __init__(self, weights_path: str | os.PathLike | None, in_channels: int = 3, patch_size: int = 16,
                 width: int = 1152, depth: int = 27, heads: int = 16, mlp_dim: int = 4304, num_patches: int = 256,
                 eps: float = 1e-6):
        super().__init__(in_channels, patch_size, width, depth, heads, mlp_dim, num_patches, eps)
        freeze(self.load_pretrained(weights_path))

    def train(self, mode: bool = True) -> SigLIP2Teacher:
        """Always stays in eval mode (the network is frozen)."""
        return super().train(False)
