"""Continuous KL-regularised (VAE) latent: the continuous baseline of the bit-budget study."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.tokenizer.quantizers.base import Quantizer, QuantizerOutput
from barlab.utils.integers import check_int

_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0  # same clamp as the LDM/SD-VAE DiagonalGaussianDistribution


class KLLatent(Quantizer):
    """Diagonal-Gaussian latent with C channels.

    Pipeline for z of shape (B, D, h, w)::

        mean, logvar = Conv1x1(D -> 2C)(z).chunk(2)      # each (B, C, h, w); logvar clamped to [-30, 20]
        s = mean + exp(logvar / 2) * eps  (training)     # reparameterised sample
        s = mean                          (eval)         # deterministic
        latent = Conv1x1(C -> D_out)(s)                  # (B, D_out, h, w), D_out = out_channels (default D)

    KL normalisation: ``kl = 0.5 * sum_{c,h,w}(mean^2 + var - 1 - logvar)``, averaged over the batch,
    i.e. nats per image (summed over all latent dims, like the LDM VAE). ``loss = kl_weight * kl``;
    ``metrics["kl"]`` is the unweighted value. Note that the KL grows with the grid size, so the
    right ``kl_weight`` depends on resolution.

    Bit budget: a continuous latent stored in 16-bit precision costs ``channels * bits_per_channel``
    bits per token (paper §2). ``bits`` and ``codes`` are None.

    Args:
        latent_channels: D.
        channels: C latent channels; knob ``tokenizer.quantizer.channels``.
        kl_weight: weight of the KL term; knob ``tokenizer.quantizer.kl_weight``.
        bits_per_channel: storage precision used for the bit budget (16 = bf16/fp16).
        out_channels: D_out, decoder input width (the output of ``proj_out``); None: D. As for
            :class:`BinaryFSQ`, so that a preset with another decoder width (``tokenizer=bar_fsq_paper``:
            SigLIP2 1152 in, ViT-L 1024 out) takes the KL latent in place of its binary FSQ.
    """

    is_discrete = False

    def __init__(self, latent_channels: int, channels: int, kl_weight: float = 1e-6, bits_per_channel: int = 16,
                 out_channels: int | None = None):
        super().__init__()
        self.latent_channels = check_int(latent_channels, "latent_channels", fix="latent_channels=64")
        self.channels = check_int(channels, "channels", fix="channels=16")
        bpc = check_int(bits_per_channel, "bits_per_channel", fix="bits_per_channel=16")
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, numbers.Real) or not kl_weight >= 0:
            raise ConfigError("kl_weight", f"must be a non-negative number, got {kl_weight!r}", fix="kl_weight=1e-6")
        self.kl_weight = float(kl_weight)
        self.bits_per_channel = bpc
        self.bits_per_token = self.channels * bpc
        self.proj_in = nn.Conv2d(self.latent_channels, 2 * self.channels, kernel_size=1)
        self.out_channels = self.decoder_width(out_channels)
        self.proj_out = nn.Conv2d(self.channels, self.out_channels, kernel_size=1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z (B, D, h, w) -> QuantizerOutput(latent (B, D_out, h, w), bits None, codes None, loss = weight * KL)."""
        mean, logvar = self.proj_in(z).float().chunk(2, dim=1)
        logvar = logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)
        if self.training:
            sample = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        else:
            sample = mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1).mean()
        latent = self.proj_out(sample.to(self.proj_out.weight.dtype))
        return QuantizerOutput(
            latent=latent,
            bits=None,
            codes=None,
            loss=self.kl_weight * kl,
            metrics={"kl": kl.detach()},
        )

    def encode_mean(self, z: Tensor) -> Tensor:
        """z (B, D, h, w) -> posterior mean (B, C, h, w) fp32: the latent the AR generator models."""
        mean, _ = self.proj_in(z).float().chunk(2, dim=1)
        return mean

    def decode_mean(self, mean: Tensor) -> Tensor:
        """Posterior mean (or a generated latent) (B, C, h, w) -> decoder input (B, D_out, h, w), as in eval."""
        return self.proj_out(mean.to(self.proj_out.weight.dtype))
