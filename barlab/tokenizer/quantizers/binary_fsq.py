"""BAR-FSQ: lookup-free binary finite scalar quantization (2 levels per channel).

Every token is k independent bits, so the implicit codebook has C = 2^k entries, but nothing
here ever materialises C: no codebook table, no integer token index, nothing of size 2^k.
Memory and compute are O(D * k), so k = 256 is as cheap as k = 16.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.tokenizer.quantizers.base import Quantizer, QuantizerOutput
from barlab.utils.integers import check_int


class BinaryFSQ(Quantizer):
    """Binary FSQ bottleneck (BAR-FSQ, paper §3.1), with the official bound or a centred one.

    Pipeline for z of shape (B, D, h, w)::

        u = Conv1x1(D -> k)(z)                        # (B, k, h, w), in fp32
        q = bound(u) rounded to {-1, +1}              # straight-through gradient, see below
        bits = (q + 1) / 2                            # (B, h, w, k) in {0, 1}
        latent = Conv1x1(k -> D_out)(q)               # (B, D_out, h, w), D_out = out_channels (default D)

    ``bound`` (knob ``tokenizer.quantizer.bound``):

    - ``official``: the official ``FSQ`` with 2 levels (``modeling/quantizer.py``):
      b = h * tanh(u + atanh(0.5 / h)) - 0.5 with h = (1 + 1e-3) / 2, rounded with a straight-through
      estimator to {-1, 0}, then q = 2 * round(b) + 1. The threshold sits at u = -atanh(0.5 / h)
      ~= -3.80, and dq/du = 2h * sech^2(u + 3.80): largest at u ~= -3.80, ~0.002 at u = 0. The shift
      atanh(0.5 / h) is computed in float32, as officially (3.8006849; in float64 it is 3.8007011,
      which would move the threshold by 1.6e-5 and flip the bits of pre-activations in between).
    - ``centred`` (barlab's default): s = tanh(u), q = where(s >= 0, +1, -1) with dq/du = sech^2(u).
      The same function shifted by 3.80 (and scaled by 1/1.001), so the threshold and the steepest
      gradient sit at u = 0, where a freshly initialised projection puts its outputs. With a learnt
      bias in front the two can represent the same quantizer; they differ in where training starts.
      Kept as the default after an A/B at default sizes (docs/results.md, "BAR-FSQ: the official bound
      against barlab's").

    A pre-activation exactly on the threshold maps to +1 in both.

    The official BAR-FSQ projects 1152 -> k -> 1024 (``in_proj`` / ``out_proj``, SigLIP2 width in, ViT-L
    decoder width out): ``out_channels`` gives the second width. Its ``nn.Linear`` weights map to the 1x1
    convs here by a reshape, (k, D) -> (k, D, 1, 1) for ``proj_in`` and (D_out, k) -> (D_out, k, 1, 1) for
    ``proj_out``; the biases are the same. (Officially the FSQ is built after ``BAR_FSQ._init_weights``
    runs, so its Linears keep torch's default init, as the convs here do.)

    Args:
        latent_channels: D, encoder output width (the input of ``proj_in``).
        bits: k, bits per token (C = 2^k); knob ``tokenizer.bits``.
        bound: ``centred`` or ``official`` (above).
        out_channels: D_out, decoder input width (the output of ``proj_out``); None: D.
    """

    is_discrete = True

    BOUNDS = ("centred", "official")
    # the official FSQ's half-width for 2 levels, (2 - 1) * (1 + eps) / 2 with eps = 1e-3
    HALF_WIDTH = (1 + 1e-3) / 2
    # atanh(0.5 / HALF_WIDTH) in float32, as the official computes it (its threshold, to the last bit)
    OFFICIAL_SHIFT = float(torch.atanh(torch.tensor(0.5) / torch.tensor(HALF_WIDTH)))

    def __init__(self, latent_channels: int, bits: int, bound: str = "centred", out_channels: int | None = None):
        super().__init__()
        if bound not in self.BOUNDS:
            raise ConfigError("bound", f"must be one of {', '.join(self.BOUNDS)}, got {bound!r}", fix="bound=centred")
        self.bound = bound
        self.latent_channels = check_int(latent_channels, "latent_channels", fix="latent_channels=64")
        self.k = check_int(bits, "bits", fix="bits=16")
        self.bits_per_token = self.k
        self.out_channels = self.decoder_width(out_channels)
        self.proj_in = nn.Conv2d(self.latent_channels, self.k, kernel_size=1)
        self.proj_out = nn.Conv2d(self.k, self.out_channels, kernel_size=1)

    def quantize(self, u: Tensor) -> Tensor:
        """(B, k, h, w) pre-activations -> (B, k, h, w) values in {-1, +1} with the bound's STE gradient."""
        u = u.float()
        if self.bound == "official":
            h = self.HALF_WIDTH
            b = torch.tanh(u + self.OFFICIAL_SHIFT) * h - 0.5      # in (-1.0005, 0.0005)
            return 2 * (b + (b.round() - b).detach()) + 1          # round to {-1, 0}, then {-1, +1}
        soft = torch.tanh(u)
        hard = torch.where(soft >= 0, 1.0, -1.0).to(soft.dtype)
        return hard + (soft - soft.detach())

    def project_in(self, z: Tensor) -> Tensor:
        """z (B, D, h, w) -> pre-activations u (B, k, h, w), in fp32 outside autocast (as officially)."""
        with torch.autocast(z.device.type, enabled=False):
            return self.proj_in(z.float())

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z (B, D, h, w) -> QuantizerOutput(latent (B, D_out, h, w), bits/codes (B, h, w, k), loss 0)."""
        q = self.quantize(self.project_in(z))
        bits = rearrange((q.detach() + 1) / 2, "b k h w -> b h w k")
        latent = self.proj_out(q.contiguous().to(self.proj_out.weight.dtype))
        return QuantizerOutput(
            latent=latent,
            bits=bits,
            codes=bits.long(),
            loss=z.new_zeros((), dtype=torch.float32),
            metrics={},
        )

    @torch.no_grad()
    def encode_bits(self, z: Tensor) -> Tensor:
        """z (B, D, h, w) -> bits (B, h, w, k), float {0, 1}."""
        q = self.quantize(self.project_in(z))
        return rearrange((q + 1) / 2, "b k h w -> b h w k")

    def decode_bits(self, bits: Tensor) -> Tensor:
        """bits (B, h, w, k) in {0, 1} (float, bool or long) -> latent (B, D_out, h, w).

        Gives exactly ``forward(z).latent`` when ``bits == encode_bits(z)``. Values other than 0/1
        are not checked; anything > 0.5 counts as a one.
        """
        if bits.ndim != 4 or bits.shape[-1] != self.k:
            raise ConfigError(
                "bits",
                f"decode_bits expects bits of shape (B, h, w, {self.k}), got {tuple(bits.shape)}",
                fix="use the same bits for the tokenizer and the generator",
            )
        q = torch.where(bits.float() > 0.5, 1.0, -1.0)
        q = rearrange(q, "b h w k -> b k h w").contiguous()
        return self.proj_out(q.to(self.proj_out.weight.dtype))
