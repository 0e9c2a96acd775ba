"""Tokenizer = encoder -> quantizer -> decoder, plus the bit-sequence view used by the AR generator."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from einops import rearrange
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.tokenizer.quantizers.base import Quantizer, QuantizerOutput


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    is_pair = isinstance(size, (tuple, list)) and len(size) == 2
    if is_pair and all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        return int(size[0]), int(size[1])
    raise ConfigError("image_size", f"must be an int or a pair of ints, got {size!r}", fix="image_size=32")


class Tokenizer(nn.Module):
    """Image autoencoder with a (discrete or continuous) bottleneck.

    Images are (B, C, H, W) in [-1, 1]; the latent grid is (h, w) = (H / f, W / f) with f the
    encoder's ``downsample`` attribute. Plain ``nn.Module``; training logic lives elsewhere.

    Args:
        encoder: (B, C, H, W) -> (B, D, h, w); must expose ``downsample`` (f).
        quantizer: a ``Quantizer`` with ``latent_channels == D``; its ``out_channels`` (if it has one,
            e.g. ``BinaryFSQ(1152, 16, out_channels=1024)`` for the paper's tokenizer; else D) is the
            width it hands the decoder.
        decoder: (B, D_out, h, w) -> (B, C, H, W), ``in_channels`` (if it has one) equal to the
            quantizer's out width.

    Errors name the argument: ``latent_channels`` (the width encoder, quantizer and decoder must
    share), ``upsample`` (the decoder's factor), ``image_size``, ``grid``, ``quantizer``.

    Continuous tokens (a continuous quantizer, e.g. ``KLLatent``): the generator models the posterior
    mean times ``latent_scale`` (LDM-style, 1/std of the means over training images, see
    :meth:`estimate_latent_scale`), as a (B, L, C) sequence (:meth:`encode_tokens`, :meth:`decode_tokens`).
    ``latent_scale`` is a plain attribute (not in the state dict): ``tokenizer.pt`` stores it beside the
    weights; None until estimated or loaded.
    """

    latent_scale: float | None = None

    def __init__(self, encoder: nn.Module, quantizer: Quantizer, decoder: nn.Module):
        super().__init__()
        if not isinstance(getattr(encoder, "downsample", None), int):
            raise TypeError(f"{type(encoder).__name__} must expose an int attribute `downsample` (the factor f)")
        q_in = quantizer.latent_channels
        q_out = getattr(quantizer, "out_channels", q_in)
        enc_d = getattr(encoder, "out_channels", q_in)
        dec_d = getattr(decoder, "in_channels", q_out)
        if not (enc_d == q_in and q_out == dec_d):
            q_text = f"{q_in}" if q_in == q_out else f"in {q_in}, out {q_out}"
            raise ConfigError(
                "latent_channels",
                f"encoder out ({enc_d}), quantizer ({q_text}) and decoder in ({dec_d}) widths differ",
                fix="latent_channels=<one width for all three>",
            )
        dec_f = getattr(decoder, "upsample", encoder.downsample)
        if dec_f != encoder.downsample:
            raise ConfigError(
                "upsample",
                f"is {dec_f} but the encoder's downsample is {encoder.downsample}",
                fix=f"upsample={encoder.downsample}",
            )
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder

    @property
    def downsample(self) -> int:
        """f, the side length of one token in pixels."""
        return int(self.encoder.downsample)

    @property
    def is_discrete(self) -> bool:
        """Whether the latent is made of tokens (and so has bits)."""
        return bool(self.quantizer.is_discrete)

    @property
    def bits_per_token(self) -> int:
        """k = ceil(log2 C) for discrete, channels * 16 for continuous."""
        return int(self.quantizer.bits_per_token)

    def grid_size(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """Token grid (h, w) for an image of side ``image_size`` (int or (H, W)); sides must divide by f."""
        height, width = _pair(image_size)
        f = self.downsample
        if height < 1 or width < 1 or height % f or width % f:
            raise ConfigError(
                "image_size",
                f"{height}x{width} is not a positive multiple of the tokenizer downsample factor {f}",
                fix=f"image_size={max(f, height // f * f)} or another downsample factor",
            )
        return height // f, width // f

    def bits_per_image(self, image_size: int | tuple[int, int]) -> int:
        """Bit budget of one image: h * w * bits_per_token (exact Python int)."""
        return self.quantizer.bits_per_image(self.grid_size(image_size))

    def encode(self, x: Tensor) -> QuantizerOutput:
        """x (B, C, H, W) in [-1, 1] -> QuantizerOutput (latent (B, D, h, w), bits/codes (B, h, w, .))."""
        self.grid_size(tuple(x.shape[-2:]))
        return self.quantizer(self.encoder(x))

    def decode(self, latent: Tensor) -> Tensor:
        """latent (B, D, h, w) -> images (B, C, h*f, w*f), unbounded."""
        return self.decoder(latent)

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """x (B, C, H, W) in [-1, 1] -> (reconstruction (B, C, H, W), QuantizerOutput)."""
        out = self.encode(x)
        return self.decode(out.latent), out

    def forward_with_distillation(self, x: Tensor) -> tuple[Tensor, QuantizerOutput, Tensor]:
        """x (B, C, H, W) -> (reconstruction (B, C, H, W), QuantizerOutput, prediction (B, h*w, D_t)).

        The prediction is the decoder's distillation head (BAR-FSQ: decoder block 2 -> MLP), compared
        with a frozen teacher's features by the training loss. The decoder must have
        ``forward_with_distillation`` (``ViTDecoder`` has).
        """
        if not hasattr(self.decoder, "forward_with_distillation"):
            raise ConfigError("decoder", f"{type(self.decoder).__name__} has no distillation head",
                              fix="a ViTDecoder, or distillation weight 0")
        out = self.encode(x)
        recon, prediction = self.decoder.forward_with_distillation(out.latent)
        return recon, out, prediction

    def encode_bits(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> token bits (B, L, k) in {0, 1}, L = h * w in raster order (row by row)."""
        self._check_discrete()
        self.grid_size(tuple(x.shape[-2:]))
        bits = self.quantizer.encode_bits(self.encoder(x))
        return rearrange(bits, "b h w k -> b (h w) k")

    def _check_discrete(self) -> None:
        if not self.is_discrete:
            raise ConfigError("quantizer", f"{type(self.quantizer).__name__} is a continuous latent and has no token "
                              "bits", fix="quantizer=binary_fsq (or fsq) for a bit-level generator")

    def decode_bits(self, bits: Tensor, grid: tuple[int, int]) -> Tensor:
        """bits (B, L, k) in {0, 1}, raster order, L = h * w -> images (B, C, h*f, w*f)."""
        self._check_discrete()
        h, w = _raster_grid(bits, grid, "decode_bits got bits", "k")
        latent = self.quantizer.decode_bits(rearrange(bits, "b (h w) k -> b h w k", h=h, w=w))
        return self.decode(latent)

    # ------------------------------------------------------------ continuous tokens
    def _check_continuous(self) -> None:
        if self.is_discrete:
            raise ConfigError("quantizer", f"{type(self.quantizer).__name__} is discrete; its tokens are bits",
                              fix="encode_bits / decode_bits, or quantizer=kl for continuous tokens")

    def checked_latent_scale(self) -> float:
        """``latent_scale``; refused in one line when a continuous tokenizer has none."""
        if self.latent_scale is None:
            raise ConfigError("latent_scale", "this continuous tokenizer has no latent scale (a tokenizer.pt "
                              "written before it was stored)", fix="export the tokenizer again with "
                              "`python -m barlab.train stage=tokenizer` (it estimates and stores latent_scale)")
        return float(self.latent_scale)

    @torch.no_grad()
    def encode_mean(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> unscaled posterior mean (B, C_lat, h, w) fp32 (continuous tokenizers)."""
        self._check_continuous()
        self.grid_size(tuple(x.shape[-2:]))
        return self.quantizer.encode_mean(self.encoder(x))

    @torch.no_grad()
    def estimate_latent_scale(self, images: Iterable[Tensor], max_images: int | None = None) -> float:
        """1 / std of the posterior means (over every value) of ``images`` (an iterable of (B, C, H, W)
        batches in [-1, 1], at most ``max_images`` of them); sets and returns ``latent_scale``."""
        means, seen = [], 0
        for batch in images:
            if max_images is not None:
                batch = batch[:max_images - seen]
            means.append(self.encode_mean(batch.to(next(self.parameters()).device)).double().flatten().cpu())
            seen += batch.shape[0]
            if max_images is not None and seen >= max_images:
                break
        values = torch.cat(means) if means else torch.zeros(0, dtype=torch.float64)
        if values.numel() < 2 or not float(values.std()) > 0:
            raise ConfigError("latent_scale", f"cannot estimate it from {seen} image(s) (no spread in the latents)",
                              fix="estimate it on more training images")
        self.latent_scale = float(1.0 / values.std())
        return self.latent_scale

    @torch.no_grad()
    def encode_tokens(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> continuous tokens (B, L, C_lat) fp32 = posterior mean * latent_scale, raster order."""
        mean = self.encode_mean(x) * self.checked_latent_scale()
        return rearrange(mean, "b c h w -> b (h w) c")

    def decode_tokens(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Continuous tokens (B, L, C_lat), raster order, L = h * w -> images (B, C, h*f, w*f): the tokens
        divided by ``latent_scale`` go through the quantizer's output projection and the decoder."""
        self._check_continuous()
        h, w = _raster_grid(tokens, grid, "decode_tokens got tokens", "C")
        mean = rearrange(tokens.float() / self.checked_latent_scale(), "b (h w) c -> b c h w", h=h, w=w)
        return self.decode(self.quantizer.decode_mean(mean))


def _raster_grid(tokens: Tensor, grid: tuple[int, int], what: str, channels: str) -> tuple[int, int]:
    """(h, w) of ``grid`` once ``tokens`` is checked to be (B, h·w, ·); else a ConfigError naming ``grid``."""
    h, w = int(grid[0]), int(grid[1])
    if tokens.ndim != 3 or tokens.shape[1] != h * w:
        raise ConfigError("grid", f"{what} of shape {tuple(tokens.shape)}, expected (B, {h * w}, {channels}) for a "
                          f"{h}x{w} grid", fix="generate with the grid of the tokenizer's image size")
    return h, w
